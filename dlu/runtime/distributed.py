"""Multi-process (multi-host) start-up through JAX's own runtime, `jax.distributed`.

On TPU VMs and under SLURM, `jax.distributed.initialize()` finds the coordinator,
the process count and this process's index from the environment; elsewhere they
come from flags. Must run before anything touches a JAX device.
"""

from __future__ import annotations

import os
import sys
import threading

import jax
from absl import flags

from dlu.errors import RunFailure, UsageError

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
flags.DEFINE_integer(
  "distributed_timeout",
  300,
  "Seconds a process waits for the coordinator and the other processes at start-up before "
  "giving up.",
)


def _give_up(message: str) -> None:
  print(message, file=sys.stderr, flush=True)
  os._exit(1)


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
  timeout: int = 300,
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
  if timeout < 1:
    raise UsageError(f"--distributed_timeout must be a positive integer, got {timeout}")
  # CPU processes exchange collectives through gloo; accelerators use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  who = f"process {process_id} of {num_processes}" if num_processes else "this process"
  where = coordinator_address or "the coordinator the cluster names"
  print(
    f"Multi-process start-up: {who} waits up to {timeout} s for {where} and the other processes",
    flush=True,
  )
  # The runtime aborts the process when its own deadline passes: give up cleanly first.
  message = (
    f"error: multi-process start-up: {who} did not reach {where} and the other processes "
    f"within --distributed_timeout={timeout} s; check that every process was started with "
    "the same --coordinator_address and --num_processes"
  )
  watchdog = threading.Timer(timeout, _give_up, args=(message,))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=timeout + 60,
    )
  except Exception as e:  # jaxlib raises its own XlaRuntimeError (a bad address, ...).
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise RunFailure(f"multi-process start-up failed: {who}, {where}: {first}") from None
  finally:
    watchdog.cancel()
  return True


def initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> bool:
  return initialize(
    distributed=flag_values.distributed,
    coordinator_address=flag_values.coordinator_address,
    num_processes=flag_values.num_processes,
    process_id=flag_values.process_id,
    timeout=flag_values.distributed_timeout,
  )


def shutdown(started: bool) -> None:
  if started:
    jax.distributed.shutdown()
