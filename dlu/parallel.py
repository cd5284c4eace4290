"""Device mesh, shardings and global batches built from each process's own rows."""

from __future__ import annotations

import collections
import functools
from typing import Any

import flax.jax_utils
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dlu.errors import UsageError

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  # Auto axes: XLA propagates shardings from the inputs (the batch) through the step.
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, *, flag: str = "--batch_size") -> None:
  n = jax.device_count()
  if global_batch_size % n:
    raise UsageError(f"{flag}={global_batch_size} must be divisible by the number of devices ({n})")


def global_batch(mesh: Mesh, local: Any) -> Any:
  """Assemble a batch sharded over 'data' from this process's rows (a pytree of arrays)."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def pmap_batch(local: Any) -> Any:
  """Reshape this process's rows to [local_devices, rows_per_device, ...] for pmap."""
  n = jax.local_device_count()
  return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), local)


def replicate_for_pmap(tree: Any) -> Any:
  """A copy of `tree` on every local device, stacked on a leading axis, for pmap."""
  return flax.jax_utils.replicate(tree)


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a pmap-replicated pytree."""
  return jax.tree.map(lambda x: x[0], tree)


@functools.cache
def is_lead_process() -> bool:
  return jax.process_index() == 0


class DispatchWindow:
  """Keeps at most `depth` dispatched computations queued ahead of the host.

  JAX dispatches asynchronously, so a Python loop of jitted calls can queue hundreds of
  programs. On CPU devices that share a few cores, a deep queue of programs with collectives
  can starve one device's participant long enough for XLA's rendezvous timeout to abort the
  process. Waiting on the output of the call `depth` calls back keeps accelerators fed while
  bounding the queue.
  """

  def __init__(self, depth: int = 2):
    self._pending: collections.deque = collections.deque()
    self._depth = depth

  def push(self, outputs: Any) -> None:
    self._pending.append(outputs)
    while len(self._pending) > self._depth:
      jax.block_until_ready(self._pending.popleft())
