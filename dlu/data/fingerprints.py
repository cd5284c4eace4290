"""A table's rows split by their content, and the table's fingerprint.

    digests = row_digests(names, x_raw, labels)        # [N] uint64: each row by its cells alone
    train, test = content_split(digests, 0.1, seed=0, what="--dataset=csv:/x.csv")
    fingerprint = table_fingerprint(names, digests, label_column="y")

A row's split depends only on its cells (columns matched by name) and the seed: reordering the
rows or the columns, or appending rows, moves no row between train, validation and test.
Identical rows share a split. The fingerprint (sha256 of the column names and the sorted row
digests) changes when a cell, a row or a column does, and not when rows are reordered.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dlu.errors import UsageError

# Streams mixed into a row's digest: each split draws its own uniform number per row.
TEST_STREAM = 0x7E57
VALIDATION_STREAM = 0x5A11D


def _text_bytes(value) -> bytes:
  """A cell as length-prefixed UTF-8 text (missing: one NUL byte)."""
  if value is None or (isinstance(value, float) and value != value):
    return b"\x00"
  text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
  data = text.encode("utf-8", "surrogatepass")
  return len(data).to_bytes(4, "little") + data


def _label_text(value) -> str:
  """A label as its class name (dlu.data.tables.encode_labels): 3.0 and 3 are "3"."""
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value)


def _numbers(x: np.ndarray) -> np.ndarray:
  """Numbers as float64 bytes with one NaN pattern and no -0.0. [N, 8 * D] uint8"""
  v = np.asarray(x, np.float64)
  v = np.where(np.isnan(v), np.nan, v) + 0.0  # -0.0 + 0.0 is 0.0
  return np.ascontiguousarray(v).view(np.uint8).reshape(len(v), -1)


def row_digests(
  names: list[str], x_raw: np.ndarray, labels: np.ndarray | None = None
) -> np.ndarray:
  """One 64-bit digest of each row's cells, columns taken in sorted name order (the label last).

  x_raw: [N, D] cells in the order of `names` (numbers, NaN for missing, or objects, hashed
  by their text); labels: [N] raw labels or their class names (both hash alike), or None.
  [N] uint64
  """
  x_raw = np.asarray(x_raw)
  order = sorted(range(len(names)), key=lambda j: names[j])
  if x_raw.dtype.kind in "biuf":
    block = _numbers(x_raw[:, order])
    rows = (block[i].tobytes() for i in range(len(block)))
  else:
    cells = x_raw[:, order].tolist()
    rows = (b"".join(_text_bytes(c) for c in row) for row in cells)
  if labels is None:
    tails = [b""] * len(x_raw)
  else:
    tails = [b"\x01" + _text_bytes(_label_text(v)) for v in np.asarray(labels).tolist()]
  out = np.empty(len(x_raw), np.uint64)
  for i, (row, tail) in enumerate(zip(rows, tails, strict=True)):
    digest = hashlib.blake2b(row + tail, digest_size=8).digest()
    out[i] = int.from_bytes(digest, "little")
  return out


def table_fingerprint(names: list[str], digests: np.ndarray, label_column: str | None) -> str:
  """sha256 over the sorted column names, the label column and the sorted row digests."""
  h = hashlib.sha256()
  h.update(repr((sorted(names), label_column)).encode("utf-8"))
  h.update(np.sort(np.asarray(digests, np.uint64)).astype("<u8").tobytes())
  return h.hexdigest()


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser (Steele, Lea and Flood 2014), elementwise on uint64."""
  x = np.asarray(x, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def uniform(digests: np.ndarray, seed: int, stream: int) -> np.ndarray:
  """A number in [0, 1) per row, fixed by its digest, the seed and the stream. [N] float64"""
  key = _splitmix64(np.array([int(seed) % (1 << 64)], np.uint64) ^ np.uint64(stream))
  mixed = _splitmix64(np.asarray(digests, np.uint64) ^ key)
  return (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def held_out(u: np.ndarray, fraction: float) -> np.ndarray:
  """Rows whose number is below `fraction`, at least one and never all (when there are two or
  more): on a tiny table the row with the smallest number is held out, the largest kept. [N] bool"""
  out = u < fraction
  if len(u) >= 2:
    if not out.any():
      out[np.argmin(u)] = True
    if out.all():
      out[np.argmax(u)] = False
  return out


def content_split(
  digests: np.ndarray, test_fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
  """(train_rows, test_rows), both sorted: a row is held out for testing when its number
  (`uniform`) is below `test_fraction`, so about that share of the rows is."""
  n = len(digests)
  if n < 2:
    raise UsageError(
      f"{what}: has {n} row{'' if n == 1 else 's'}; at least 2 are needed to hold some out for "
      "testing"
    )
  test = held_out(uniform(digests, seed, TEST_STREAM), float(test_fraction))
  return np.flatnonzero(~test), np.flatnonzero(test)
