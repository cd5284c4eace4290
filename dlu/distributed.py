"""Multi-process (multi-host) start-up through JAX's own runtime, `jax.distributed`.

On TPU VMs and under SLURM, `jax.distributed.initialize()` finds the coordinator,
the process count and this process's index from the environment; elsewhere they
come from flags. Must run before anything touches a JAX device.
"""

from __future__ import annotations

import os

import jax
from absl import flags

from dlu.errors import UsageError

flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "Multi-process start-up: on (always), off, or auto (on when a coordinator is "
  "given or SLURM/TPU-VM multi-process variables are set).",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for --distributed.")
flags.DEFINE_integer("num_processes", None, "Number of processes in the job, for --distributed.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, --num_processes).")


def _cluster_detected() -> bool:
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
  tpu_multihost = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
  return slurm or tpu_multihost


def initialize(
  *,
  distributed: str,
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
) -> bool:
  """Starts jax.distributed when asked or detected; returns whether it did."""
  given = [coordinator_address is not None, num_processes is not None, process_id is not None]
  if distributed == "off" or (distributed == "auto" and not any(given) and not _cluster_detected()):
    return False
  if any(given) and not all(given):
    raise UsageError(
      "--coordinator_address, --num_processes and --process_id go together: "
      "give all three, or none to detect them from SLURM or a TPU VM"
    )
  if num_processes is not None:
    if num_processes < 1:
      raise UsageError(f"--num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
      raise UsageError(f"--process_id must be in [0, {num_processes}), got {process_id}")
  # CPU processes exchange collectives through gloo; accelerators use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  return True


def initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> bool:
  return initialize(
    distributed=flag_values.distributed,
    coordinator_address=flag_values.coordinator_address,
    num_processes=flag_values.num_processes,
    process_id=flag_values.process_id,
  )


def shutdown(started: bool) -> None:
  if started:
    jax.distributed.shutdown()
