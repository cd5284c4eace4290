"""Anomaly scores from representations: distances of new codes to the training codes.

    s = knn_distance(train_codes, codes, k=5)   # [N] mean distance to the k nearest
    s = csi_cosine(train_codes, codes)          # [N] CSI's score, negated: higher = anomalous

Higher is less like the training data, as every dlu anomaly score.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

from dlu.errors import UsageError


def knn_distance(train: np.ndarray, codes: np.ndarray, *, k: int = 5) -> np.ndarray:
  """Mean Euclidean distance of each code [N, D] to its k nearest training codes [M, D]. [N]"""
  if not 1 <= k <= len(train):
    raise UsageError(f"k-NN score: k={k} must be between 1 and the {len(train)} training codes")
  nn = NearestNeighbors(n_neighbors=k).fit(np.asarray(train, np.float64))
  dist, _ = nn.kneighbors(np.asarray(codes, np.float64))
  return dist.mean(axis=1)


def csi_cosine(train: np.ndarray, codes: np.ndarray) -> np.ndarray:
  """Minus CSI's score (Tack et al. 2020): the cosine to the nearest training code times the
  code's norm, negated so that higher is more anomalous. [N]"""
  train, codes = np.asarray(train, np.float64), np.asarray(codes, np.float64)
  unit = lambda z: z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  nn = NearestNeighbors(n_neighbors=1, metric="cosine").fit(unit(train))
  dist, _ = nn.kneighbors(unit(codes))
  cosine = 1.0 - dist[:, 0]
  return -cosine * np.linalg.norm(codes, axis=1)
