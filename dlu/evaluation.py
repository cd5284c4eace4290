"""Whole-split evaluation: metric means and embeddings over padded, sharded batches."""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dlu import parallel


def round_batch_size(requested: int) -> int:
  """The smallest multiple of the device count that is >= `requested`."""
  n = jax.device_count()
  return -(-requested // n) * n


def padded_batches(x: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process's rows of consecutive global batches covering `x`, padded, with a mask."""
  count, index = jax.process_count(), jax.process_index()
  per_process = batch_size // count
  for start in range(0, len(x), batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < len(x)
    idx = np.where(mask, idx, 0)[index * per_process:(index + 1) * per_process]
    yield x[idx], mask[index * per_process:(index + 1) * per_process]


def mean_metrics(eval_sums: Callable, state, x: np.ndarray, rng: jax.Array, *, mesh: Mesh,
                 batch_size: int) -> dict[str, float]:
  """Means over all of `x` of a family's per-example eval metrics."""
  totals = None
  for i, (images, mask) in enumerate(padded_batches(x, batch_size)):
    batch = parallel.global_batch(mesh, {"image": images})
    sums = eval_sums(state, batch, parallel.global_batch(mesh, mask), jax.random.fold_in(rng, i))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  return {k: float(v) / len(x) for k, v in jax.device_get(totals).items()}


def embed_split(embed: Callable, state, x: np.ndarray, *, mesh: Mesh,
                batch_size: int) -> np.ndarray:
  """Embeddings of every row of `x`, in order, on every process. [N, D]"""
  out = []
  for images, _ in padded_batches(x, batch_size):
    e = embed(state, parallel.global_batch(mesh, images))
    out.append(np.asarray(multihost_utils.process_allgather(e, tiled=True)))
  return np.concatenate(out)[:len(x)]
