"""A split evaluated whole: metric means, per-example values, embeddings and cluster
assignments of every row, computed over padded batches sharded across the devices."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dlu.runtime import parallel


def round_batch_size(requested: int) -> int:
  """The smallest multiple of the device count that is >= `requested`."""
  n = jax.device_count()
  return -(-requested // n) * n


#: The most bytes of float32 input one global eval batch holds (large images: fewer rows).
MAX_BATCH_BYTES = 256 << 20


def fit_batch_size(x: np.ndarray, batch_size: int) -> int:
  """`batch_size`, or fewer rows (a multiple of the device count) when a batch of `x` as
  float32 would pass MAX_BATCH_BYTES."""
  n = jax.device_count()
  row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * 4)
  return min(batch_size, max(n, MAX_BATCH_BYTES // row_bytes // n * n))


def padded_batches(x: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process's rows of consecutive global batches covering `x`, with a mask. The last
  batch is padded to a multiple of the device count, not to `batch_size`."""
  count, index = jax.process_count(), jax.process_index()
  for start in range(0, len(x), batch_size):
    size = min(batch_size, round_batch_size(len(x) - start))
    per_process = size // count
    idx = np.arange(start, start + size)
    mask = idx < len(x)
    idx = np.where(mask, idx, 0)[index * per_process : (index + 1) * per_process]
    yield x[idx], mask[index * per_process : (index + 1) * per_process]


def mean_metrics(
  eval_sums: Callable,
  state,
  x: np.ndarray,
  rng: jax.Array,
  *,
  mesh: Mesh,
  batch_size: int,
  y: np.ndarray | None = None,
) -> dict[str, float]:
  """Means over all of `x` of a family's per-example eval metrics; batches carry `label`
  (rows of `y`) when `y` is given."""
  totals, window = None, parallel.DispatchWindow()
  batch_size = fit_batch_size(x, batch_size)
  labels = padded_batches(y, batch_size) if y is not None else None
  for i, (images, mask) in enumerate(padded_batches(x, batch_size)):
    local = {"image": images}
    if labels is not None:
      local["label"] = next(labels)[0]
    batch = parallel.global_batch(mesh, local)
    sums = eval_sums(state, batch, parallel.global_batch(mesh, mask), jax.random.fold_in(rng, i))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    window.push(totals)
  return {k: float(v) / len(x) for k, v in jax.device_get(totals).items()}


def per_example(
  fn: Callable, state, x: np.ndarray, *, mesh: Mesh, batch_size: int, rng: jax.Array | None = None
) -> np.ndarray:
  """fn's rows for every row of `x`, in order, on every process. [N, ...]

  `fn(state, images)`, or `fn(state, images, rng_i)` when `rng` is given, returns a value
  per row of a batch, sharded like the batch. Batch i gets `fold_in(rng, i)`, as in
  `mean_metrics`, so both see the same noise (e.g. the same binarised test images).
  """
  out = []
  for i, (images, _) in enumerate(padded_batches(x, fit_batch_size(x, batch_size))):
    args = (state, parallel.global_batch(mesh, images))
    if rng is not None:
      args += (jax.random.fold_in(rng, i),)
    out.append(np.asarray(multihost_utils.process_allgather(fn(*args), tiled=True)))
  return np.concatenate(out)[: len(x)]


def embed_split(
  embed: Callable, state, x: np.ndarray, *, mesh: Mesh, batch_size: int
) -> np.ndarray:
  """Embeddings of every row of `x`, in order, on every process. [N, D]"""
  return per_example(embed, state, x, mesh=mesh, batch_size=batch_size)


def cluster_assignments(
  probs: Callable, state, x: np.ndarray, *, mesh: Mesh, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """Soft [N, K] and hard [N] assignments of every row of `x` by a clustering layer's
  `probs(state, images)`, jitted over images (`parallel.jit_over_images`)."""
  q = per_example(probs, state, x, mesh=mesh, batch_size=batch_size)
  return q, q.argmax(axis=1).astype(np.int32)
