"""Training batches gathered in device memory, and several steps per dispatch.

Datasets this small fit in device memory, so the training split is put there once and
each batch is gathered on device by index: per step only the indices (from the
BatchSampler's per-epoch permutation, so the order is exactly the host loop's) cross
to the device. `steps_per_dispatch=K` runs K steps in one jitted `lax.scan`, so the
host launches one program per K steps; the loop logs, evaluates and checkpoints
between dispatches and gets the metrics of each dispatch's last step.

Batches hold `image`, plus `index` (the rows) for families that set `needs_index` and
`label` (y_train at those rows, int32) for families that set `needs_label`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dlu import parallel
from dlu.data import BatchSampler
from dlu.errors import UsageError

# Larger training splits stay in host memory and are fed one batch per step.
MAX_DEVICE_BYTES = 2 << 30


def _replicate(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A copy of `x` (the same in every process) on every device of the mesh."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def dispatch_length(
  step: int, num_steps: int, steps_per_dispatch: int, boundaries: tuple[int, ...]
) -> int:
  """Steps in the dispatch that starts after `step`: at most K, never past a multiple of a
  boundary (log, eval, checkpoint intervals) or `num_steps`, so those happen as with K=1."""
  n = min(steps_per_dispatch, num_steps - step)
  for every in boundaries:
    n = min(n, every - step % every)
  return n


def _check_labels(family: Any, y_train: np.ndarray | None) -> np.ndarray | None:
  """The labels the family's batches need (int32), or None when it needs none."""
  if not family.needs_label:
    return None
  if y_train is None:
    raise UsageError(
      "this model trains on labelled batches (--conditional), but the training split has no labels"
    )
  return np.asarray(y_train, np.int32)


def make_multi_step(family: Any, mesh: Mesh) -> Callable:
  """(state, arrays, indices [K, B], rng) -> (state, metrics of the last step), state donated.

  `arrays`: {"image": x_train} and, for families that need labels, {"label": y_train}.
  """
  repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)

  def multi_step(state, arrays, indices, rng):
    def one(state, idx):  # The same step as K=1, on a batch sharded as global_batch shards it.
      batch = {
        name: jax.lax.with_sharding_constraint(jnp.take(v, idx, axis=0), sharded)
        for name, v in arrays.items()
      }
      if family.needs_index:
        batch["index"] = jax.lax.with_sharding_constraint(idx, sharded)
      return family.train_step(state, batch, rng)

    state, metrics = jax.lax.scan(one, state, indices)
    return state, jax.tree.map(lambda m: m[-1], metrics)

  # K is the leading size of `indices`: one compilation per distinct K.
  return jax.jit(
    multi_step,
    in_shardings=(repl, repl, repl, repl),
    out_shardings=(repl, repl),
    donate_argnums=(0,),
  )


class DeviceFeed:
  """Runs training steps on batches gathered on device; `__call__(state, step, n)` runs n steps.

  n = 1 calls the ordinary jitted step (the program a host-fed loop runs), so K=1 gives
  bit-identical results; n > 1 runs the steps in one `lax.scan`.
  """

  def __init__(
    self,
    family: Any,
    mesh: Mesh,
    x_train: np.ndarray,
    sampler: BatchSampler,
    train_step: Callable,
    rng: jax.Array,
    *,
    y_train: np.ndarray | None = None,
  ):
    self.sampler, self.train_step, self.rng = sampler, train_step, rng
    self._replicated = parallel.replicated(mesh)
    # [N, H, W, C] as stored (uint8: 4x less), and [N] int32 labels when the family needs them.
    self.arrays = {"image": _replicate(x_train, self._replicated)}
    labels = _check_labels(family, y_train)
    if labels is not None:
      self.arrays["label"] = _replicate(labels, self._replicated)
    with_index = family.needs_index

    def gather(arrays, idx):
      batch = {name: jnp.take(v, idx, axis=0) for name, v in arrays.items()}
      return {**batch, "index": idx} if with_index else batch

    self.gather = jax.jit(gather, out_shardings=parallel.data_sharded(mesh))
    self.multi_step = make_multi_step(family, mesh)

  def indices(self, step: int, n: int) -> jax.Array:
    """[n, global batch] int32: the BatchSampler's global batches of steps step..step+n-1."""
    idx = np.stack([self.sampler.global_indices(s) for s in range(step, step + n)]).astype(np.int32)
    return _replicate(idx, self._replicated)

  def __call__(self, state: Any, step: int, n: int) -> tuple[Any, Any]:
    idx = self.indices(step, n)
    if n == 1:
      return self.train_step(state, self.gather(self.arrays, idx[0]), self.rng)
    return self.multi_step(state, self.arrays, idx, self.rng)


class HostFeed:
  """One step per dispatch on batches gathered in host memory (pmap, or data too large)."""

  def __init__(
    self,
    mesh: Mesh,
    x_train: np.ndarray,
    sampler: BatchSampler,
    train_step: Callable,
    rng: jax.Array,
    *,
    pmap: bool,
    with_index: bool = False,
    labels: np.ndarray | None = None,
  ):
    """`labels`: [N] int32 put in each batch as `label`; None for families that need none."""
    self.mesh, self.x_train, self.sampler, self.labels = mesh, x_train, sampler, labels
    self.train_step, self.rng, self.pmap, self.with_index = train_step, rng, pmap, with_index

  def __call__(self, state: Any, step: int, n: int) -> tuple[Any, Any]:
    assert n == 1, "a HostFeed runs one step per dispatch"
    indices = self.sampler.indices(step)
    local = {"image": self.x_train[indices]}
    if self.labels is not None:
      local["label"] = self.labels[indices]
    if self.with_index:
      local["index"] = indices.astype(np.int32)
    batch = parallel.pmap_batch(local) if self.pmap else parallel.global_batch(self.mesh, local)
    return self.train_step(state, batch, self.rng)


def make_feed(
  family: Any,
  mesh: Mesh,
  x_train: np.ndarray,
  sampler: BatchSampler,
  train_step: Callable,
  rng: jax.Array,
  *,
  y_train: np.ndarray | None = None,
  parallelism: str = "jit",
  steps_per_dispatch: int = 1,
) -> DeviceFeed | HostFeed:
  """A DeviceFeed when the split fits in device memory under jit, otherwise a HostFeed.

  `y_train` feeds the batches' `label` for families that set `needs_label`.
  """
  pmap = parallelism == "pmap"
  fits = x_train.nbytes <= MAX_DEVICE_BYTES
  if steps_per_dispatch > 1 and (pmap or not fits):
    why = (
      "--parallelism=pmap"
      if pmap
      else f"a training split of {x_train.nbytes / 2**30:.1f} GiB (more than fits in device memory)"
    )
    raise UsageError(
      f"--steps_per_dispatch={steps_per_dispatch} needs the training data in device "
      f"memory under --parallelism=jit; {why} is fed one step at a time: use 1"
    )
  if pmap or not fits:
    return HostFeed(
      mesh,
      x_train,
      sampler,
      train_step,
      rng,
      pmap=pmap,
      with_index=family.needs_index,
      labels=_check_labels(family, y_train),
    )
  return DeviceFeed(family, mesh, x_train, sampler, train_step, rng, y_train=y_train)
