"""Sample-quality metrics between two sets of features: FID, KID, precision and recall.

All take feature arrays [N, D] (numpy, any float dtype) from any feature function:
dlu's own classifier (`dlu.metrics.feature_net`) or, where they are available, Inception
pool features. Work is done in float64 on the host, in row blocks, so 10^4 x 10^4
comparisons never hold a full N x N matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.linalg

BLOCK = 2048  # rows per block of pairwise computations


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f"{name}: expected features [N >= 2, D], got shape {x.shape}")
  return x


def _blocks(n: int) -> Iterator[slice]:
  for start in range(0, n, BLOCK):
    yield slice(start, min(start + BLOCK, n))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and covariance [D, D] (unbiased) of features [N, D]."""
  x = _as_features(features, "features")
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  w, v = scipy.linalg.eigh(sigma)
  return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Frechet distance of two Gaussians.

  Tr (S1 S2)^(1/2) is taken as Tr (S1^(1/2) S2 S1^(1/2))^(1/2), the same eigenvalues in a
  symmetric PSD form: real and stable even for the singular covariances of ReLU features,
  where a general matrix square root (scipy.linalg.sqrtm) warns and may go complex.
  """
  root1 = _psd_sqrt(sigma1)
  eigenvalues = scipy.linalg.eigvalsh(root1 @ sigma2 @ root1)
  trace_sqrt = np.sum(np.sqrt(np.maximum(eigenvalues, 0.0)))
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
  return float(max(value, 0.0))


def fid(features1: np.ndarray, features2: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)."""
  return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def _kernel_sum(x: np.ndarray, y: np.ndarray, *, exclude_diagonal: bool) -> float:
  """Sum of the cubic polynomial kernel (x.y / D + 1)^3 over all pairs (i != j if asked)."""
  d = x.shape[1]
  x32, y32 = x.astype(np.float32), (y / d).astype(np.float32)
  total = 0.0
  for rows in _blocks(len(x)):
    k = x32[rows] @ y32.T  # [block, M]; float32 products, summed in float64 below
    k += 1.0
    total += np.einsum("ij,ij,ij->", k, k, k, dtype=np.float64, optimize=False)
  if exclude_diagonal:
    total -= np.sum((np.sum(x * y, axis=1) / d + 1.0) ** 3)
  return total


def kid(features1: np.ndarray, features2: np.ndarray) -> float:
  """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 estimate with
  the kernel (x.y / D + 1)^3, over all pairs. Its expectation is 0 for equal distributions,
  so it can be slightly negative."""
  x, y = _as_features(features1, "features1"), _as_features(features2, "features2")
  m, n = len(x), len(y)
  kxx = _kernel_sum(x, x, exclude_diagonal=True) / (m * (m - 1))
  kyy = _kernel_sum(y, y, exclude_diagonal=True) / (n * (n - 1))
  kxy = _kernel_sum(x, y, exclude_diagonal=False) / (m * n)
  return float(kxx + kyy - 2.0 * kxy)


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
  """Squared distance of each row to its k-th nearest other row. [N]"""
  x = _as_features(features, "features").astype(np.float32)  # float32 halves the time
  if not 1 <= k < len(x):
    raise ValueError(f"k={k} needs 1 <= k < N={len(x)}")
  x_sq = np.sum(x * x, axis=1)
  minus_2x = -2.0 * x
  radii = np.empty(len(x), np.float32)
  for rows in _blocks(len(x)):
    d = x[rows] @ minus_2x.T  # [block, N]: |a - b|^2 less the row's constant |a|^2
    d += x_sq[None, :]
    # Column k of the sorted row: column 0 is the point itself (distance 0).
    radii[rows] = np.partition(d, k, axis=1)[:, k] + x_sq[rows]
  return np.maximum(radii, 0.0)


def manifold_coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
  """Fraction of `queries` inside the union of balls around `manifold` rows with `radii`.

  |q - m|^2 <= r  <=>  2 q.m - (|m|^2 - r) >= |q|^2: one matmul and a row maximum per block.
  """
  manifold, queries = manifold.astype(np.float32), queries.astype(np.float32)
  offset = np.sum(manifold * manifold, axis=1) - radii
  two_m = 2.0 * manifold
  inside = np.zeros(len(queries), bool)
  for rows in _blocks(len(queries)):
    score = queries[rows] @ two_m.T  # [block, M]
    score -= offset[None, :]
    inside[rows] = score.max(axis=1) >= np.sum(queries[rows] ** 2, axis=1)
  return float(inside.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019).

  precision: the fraction of generated samples inside the real manifold (the union of
  balls reaching each real sample's k-th nearest real neighbour); recall: the fraction
  of real samples inside the generated manifold.
  """
  real, fake = _as_features(real, "real"), _as_features(fake, "fake")
  precision = manifold_coverage(real, knn_radii(real, k), fake)
  recall = manifold_coverage(fake, knn_radii(fake, k), real)
  return precision, recall


def all_metrics(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> dict[str, float]:
  """fid, kid, precision and recall of `fake` against `real`."""
  precision, recall = precision_recall(real, fake, k=k)
  return {"fid": fid(real, fake), "kid": kid(real, fake), "precision": precision, "recall": recall}


def features_of(
  feature_fn: Callable[[np.ndarray], Any], images: np.ndarray, *, batch_size: int = 500
) -> np.ndarray:
  """Any feature function (e.g. Inception pool features) mapped over images in batches. [N, D]"""
  out = [
    np.asarray(feature_fn(images[i : i + batch_size]), np.float64)
    for i in range(0, len(images), batch_size)
  ]
  return np.concatenate([f.reshape(len(f), -1) for f in out])


def score(
  feature_fn: Callable[[np.ndarray], Any],
  real_images: np.ndarray,
  fake_images: np.ndarray,
  *,
  batch_size: int = 500,
  k: int = 3,
) -> dict[str, float]:
  """fid, kid, precision and recall of generated images against real ones, in the features
  of `feature_fn`."""
  return all_metrics(
    features_of(feature_fn, real_images, batch_size=batch_size),
    features_of(feature_fn, fake_images, batch_size=batch_size),
    k=k,
  )
