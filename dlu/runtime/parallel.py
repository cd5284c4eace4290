"""Data parallelism: the device mesh, shardings, global batches built from each process's
own rows, and a family's pure functions jitted (or pmapped) over them.

No I/O here. A family is anything with the methods of `dlu.families.base.Family`; this
module only wraps them with shardings and donation, so it sits below the families.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlu.errors import UsageError

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  # Auto axes: XLA propagates shardings from the inputs (the batch) through the step.
  return jax.make_mesh(
    (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_replicated(mesh: Mesh, tree: Any) -> Any:
  """`tree` (the same on every process) as arrays replicated over every device of `mesh`.

  With several processes the mesh holds devices this process cannot address, which
  `jax.device_put` refuses; each process then gives its copy as its local data.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = put(jax.random.key_data(x))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, tree)


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


# --- A family's functions, compiled over the mesh.


def make_train_step(family: Any, mesh: Mesh, *, parallelism: str = "jit") -> Callable:
  """(state, batch, rng) -> (state, metrics), the state donated.

  jit: parameters replicated and the batch sharded over 'data'; the loss is a mean
  over the global batch, so its gradient is already the global one.
  pmap: the state carries a leading device axis and gradients are pmean-ed.
  """
  if parallelism == "pmap":
    step = functools.partial(family.train_step, axis_name=DATA_AXIS)
    return jax.pmap(step, axis_name=DATA_AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
  repl, sharded = replicated(mesh), data_sharded(mesh)
  return jax.jit(
    family.train_step,
    in_shardings=(repl, sharded, repl),
    out_shardings=(repl, repl),
    donate_argnums=(0,),
  )


def make_init(family: Any, mesh: Mesh) -> tuple[Callable, Any]:
  """A jitted init that builds the state replicated (never first on device 0), and its shapes."""
  repl = replicated(mesh)
  init = jax.jit(family.init_state, out_shardings=repl)
  abstract = jax.eval_shape(family.init_state, jax.random.key(0))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), abstract)
  return init, abstract


def make_eval_sums(family: Any, mesh: Mesh) -> Callable:
  """(state, batch, mask, rng) -> {metric: sum over unmasked examples}."""

  def sums(state, batch, mask, rng):
    metrics = family.eval_metrics(state, batch, rng)
    return {k: jnp.sum(jnp.where(mask, v, 0.0)) for k, v in metrics.items()}

  repl, sharded = replicated(mesh), data_sharded(mesh)
  return jax.jit(sums, in_shardings=(repl, sharded, sharded, repl), out_shardings=repl)


def make_images(family: Any, mesh: Mesh) -> Callable:
  """(state, batch, rng) -> the family's image grids, on every device."""
  repl = replicated(mesh)
  return jax.jit(family.images, in_shardings=(repl, repl, repl), out_shardings=repl)


def jit_over_images(fn: Callable, mesh: Mesh) -> Callable:
  """(state, images) -> [B, ...] values per image, sharded like the batch."""
  repl, sharded = replicated(mesh), data_sharded(mesh)
  return jax.jit(fn, in_shardings=(repl, sharded), out_shardings=sharded)


def make_embed(family: Any, mesh: Mesh) -> Callable:
  return jit_over_images(family.embed, mesh)


def make_per_example(fn: Callable, mesh: Mesh) -> Callable:
  """(state, images, rng) -> [B, ...] values per example, sharded like the batch."""
  repl, sharded = replicated(mesh), data_sharded(mesh)
  return jax.jit(fn, in_shardings=(repl, sharded, repl), out_shardings=sharded)
