"""Subsets of a dataset's training split: the validation rows held out of it, and a
reproducible class-imbalanced subset of it.

    ds = subsets.hold_out_validation(ds, 0.1, seed=0)    # ds.x_valid: 10% of train, never trained on
    ds = subsets.class_balance(ds, "longtail:100", seed=0)  # 100:1 between largest and smallest class

Both depend only on the dataset and the seed: every process and every resumed run picks the
same rows. A table's validation rows depend on each row's content, not its place (like its test
rows, dlu.data.fingerprints). Training rows keep their stored order.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dlu.data import fingerprints
from dlu.data.arrays import Dataset, take
from dlu.errors import UsageError

# Streams of the numpy generator seeded with [seed, stream]: each selection draws its own.
_VALIDATION_STREAM = 0x5A11D
_BALANCE_STREAM = 0xBA1A


def validation_rows(num_train: int, fraction: float, seed: int) -> np.ndarray:
  """Rows of the training split held out for validation: round(fraction * num_train) of
  them (at least one when fraction > 0), chosen by `seed`. [V] int64, sorted"""
  if not 0 <= fraction < 1:
    raise UsageError(f"--validation_fraction must be in [0, 1), got {fraction!r}")
  if fraction == 0:
    return np.zeros(0, np.int64)
  count = max(1, int(round(fraction * num_train)))
  if count >= num_train:
    raise UsageError(
      f"--validation_fraction={fraction} leaves no training rows of {num_train}; use a smaller one"
    )
  perm = np.random.default_rng([int(seed) % (1 << 64), _VALIDATION_STREAM]).permutation(num_train)
  return np.sort(perm[:count])


def content_validation_rows(digests: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """A table's validation rows, chosen by each row's content (`digests`, one per training row)
  like its test rows: about `fraction` of them, at least one when fraction > 0. [V] int64"""
  if not 0 <= fraction < 1:
    raise UsageError(f"--validation_fraction must be in [0, 1), got {fraction!r}")
  if fraction == 0:
    return np.zeros(0, np.int64)
  if len(digests) < 2:
    raise UsageError(
      f"--validation_fraction={fraction} leaves no training rows of {len(digests)}; use a "
      "smaller one"
    )
  u = fingerprints.uniform(digests, seed, fingerprints.VALIDATION_STREAM)
  return np.flatnonzero(fingerprints.held_out(u, fraction)).astype(np.int64)


def _keep(ds: Dataset, rows: np.ndarray, **changes) -> Dataset:
  """`ds` with only the training rows `rows` (rows on disk stay there: a view)."""
  return dataclasses.replace(
    ds,
    x_train=take(ds.x_train, rows),
    y_train=None if ds.y_train is None else ds.y_train[rows],
    unsplit=ds if ds.unsplit is None else ds.unsplit,
    train_rows=rows if ds.train_rows is None else ds.train_rows[rows],
    row_digests=None if ds.row_digests is None else ds.row_digests[rows],
    **changes,
  )


def hold_out_validation(ds: Dataset, fraction: float, *, seed: int) -> Dataset:
  """`ds` with a validation split: its own (a tfds `validation` split) when it has one, else
  `validation_rows` of the training split (none when `fraction` is 0)."""
  if ds.x_valid is not None:
    return ds
  if ds.row_digests is None:
    valid = validation_rows(len(ds.x_train), fraction, seed)
  else:
    valid = content_validation_rows(ds.row_digests, fraction, seed)
  if not len(valid):
    return ds
  train = np.setdiff1d(np.arange(len(ds.x_train)), valid)
  return _keep(
    ds,
    train,
    x_valid=take(ds.x_train, valid),
    y_valid=None if ds.y_train is None else ds.y_train[valid],
    valid_rows=valid if ds.train_rows is None else ds.train_rows[valid],
  )


def parse_class_balance(spec: str, num_classes: int) -> tuple[str, list[float] | float]:
  """("longtail", ratio) or ("counts", [n_0, ..., n_K-1]) from --class_balance."""
  kind, _, arg = str(spec).strip().partition(":")
  try:
    if kind == "longtail":
      ratio = float(arg)
      if not math.isfinite(ratio) or ratio <= 0:
        ratio = None
      elif ratio >= 1:
        return kind, ratio
    elif kind == "counts":
      counts = [int(v) for v in arg.split(",")]
      if len(counts) == num_classes and min(counts) >= 1:
        return kind, counts
  except ValueError:
    pass
  else:
    if kind == "longtail" and ratio is None:
      raise UsageError(
        f"--class_balance={spec}: the ratio {arg!r} is not a finite positive number; expected "
        "longtail:R with 1 <= R < inf (the ratio between the largest and the smallest class)"
      )
  raise UsageError(
    f"--class_balance={spec!r}: expected longtail:R (R >= 1, the ratio between the largest and "
    f"the smallest class) or counts:N0,...,N{num_classes - 1} (one positive count per class)"
  )


def class_counts(spec: str, available: np.ndarray) -> np.ndarray:
  """Examples of each class an imbalanced subset keeps. longtail:R is the exponential profile
  n_c = n_max * R^(-c / (K - 1)) (class 0 the largest, class K-1 n_max / R), with n_max the
  smallest class's available count; counts:... as given. [K] int64"""
  kind, arg = parse_class_balance(spec, len(available))
  if kind == "longtail":
    k = len(available)
    n_max = int(available.min())
    exponents = np.arange(k) / max(k - 1, 1)
    counts = np.maximum(1, np.floor(n_max * float(arg) ** -exponents + 1e-9)).astype(np.int64)
  else:
    counts = np.asarray(arg, np.int64)
  short = np.flatnonzero(counts > available)
  if len(short):
    c = int(short[0])
    raise UsageError(
      f"--class_balance={spec}: class {c} has {int(available[c])} training examples, "
      f"{int(counts[c])} asked for"
    )
  return counts


def describe_balance(spec: str, y_train: np.ndarray, num_classes: int) -> str:
  """One line: the examples of each class an imbalanced training split holds."""
  counts = np.bincount(y_train, minlength=num_classes)
  per_class = ", ".join(f"{c}: {int(n):,}" for c, n in enumerate(counts))
  return f"--class_balance={spec}: {int(counts.sum()):,} training examples, per class {per_class}"


def class_balance(ds: Dataset, spec: str | None, *, seed: int) -> Dataset:
  """`ds` with a class-imbalanced subset of its training split (`class_counts` of each class,
  the first of a per-class shuffle fixed by `seed`); `ds` itself when `spec` is empty."""
  if not spec:
    return ds
  if ds.y_train is None or not ds.num_classes:
    raise UsageError(f"--class_balance needs labels; {ds.name} has none")
  available = np.bincount(ds.y_train, minlength=ds.num_classes)
  counts = class_counts(spec, available)
  rng = np.random.default_rng([int(seed) % (1 << 64), _BALANCE_STREAM])
  rows = [
    rng.permutation(np.flatnonzero(ds.y_train == c))[:n] for c, n in enumerate(counts.tolist())
  ]
  return _keep(ds, np.sort(np.concatenate(rows)))
