"""The in-memory form of every dataset (images or vectors), pixel scaling, and the checks local
sources apply.

The bottom of dlu.data: it imports no other module of the package; the local sources,
tfds_offline and the entry points (sources) build on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dlu.errors import UsageError

PIXEL_RANGES = ("unit", "symmetric")
ACCEPTED_FORMS = (
  "digits, fashion_mnist, mnist, cifar10, ... (any tfds image dataset, as "
  "NAME[/CONFIG][:VERSION]), npz:PATH, folder:DIR, csv:PATH, parquet:PATH, json:PATH, records:DIR "
  "(experiments.prepare_data), npy:PATH (memory-mapped), series:PATH (.ts, .tsv, .csv, .npz or a "
  "directory of NAME_TRAIN/NAME_TEST files), text:PATH (a .txt file of one document a line, a "
  "directory of .txt files, or a .csv/.parquet table with --text_column)"
)
VALID_CHANNELS = (1, 3, 4)
HELD_OUT_FRACTION = 0.1


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: compare by identity
class Dataset:
  """A whole dataset held in host memory: images [N, H, W, C], vectors [N, D] or series
  [N, T, C] (float32, NaN where a step is missing or padded; `dlu.data.series`).

  Images are stored as read (uint8 0..255, or float32 in [0, 1]) and scaled by `normalize`;
  vectors (tables, npz arrays [N, D]) are float32 model inputs already, made from the raw
  columns by `preprocessing` (a `dlu.data.preprocessing.Preprocessing`, fitted on the training split).
  """

  name: str
  x_train: np.ndarray  # [N, H, W, C] or [N, D]
  y_train: np.ndarray | None  # [N] int32; None when unlabelled
  x_test: np.ndarray  # [M, ...], same dtype and example shape as x_train
  y_test: np.ndarray | None  # [M] int32
  num_classes: int | None
  preprocessing: Any = None  # vectors: how raw columns became x; images: None
  x_valid: np.ndarray | None = None  # [V, ...] held out of training (dlu.data.subsets)
  y_valid: np.ndarray | None = None  # [V] int32
  unsplit: Dataset | None = None  # as loaded, before subsets of its training split were taken
  train_rows: np.ndarray | None = None  # [N] the rows of unsplit.x_train that x_train holds
  valid_rows: np.ndarray | None = None  # [V] those x_valid holds (held out of unsplit.x_train)
  # Tables: [N] uint64 content digest of each x_train row (validation rows are chosen by them)
  # and the table's fingerprint {"fingerprint", "rows", "columns"} (dlu.data.fingerprints).
  row_digests: np.ndarray | None = None
  fingerprint: dict | None = None

  def __post_init__(self):
    # Catches mismatched splits at construction, not deep inside a jitted step.
    if self.x_train.ndim not in (2, 3, 4) or self.x_test.shape[1:] != self.x_train.shape[1:]:
      raise UsageError(
        f"Dataset({self.name}): x_train {self.x_train.shape} and x_test "
        f"{self.x_test.shape} must both be images [N, H, W, C], series [N, T, C] or vectors [N, D] "
        "of one shape"
      )
    for x, y, split in ((self.x_train, self.y_train, "train"), (self.x_test, self.y_test, "test")):
      if y is not None and y.shape != (len(x),):
        raise UsageError(
          f"Dataset({self.name}): y_{split} has shape {y.shape}, expected ({len(x)},)"
        )

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) of the `train`, `valid` or `test` split."""
    if name == "valid" and self.x_valid is None:
      raise UsageError(f"{self.name} has no validation split (--validation_fraction=0)")
    return {
      "train": (self.x_train, self.y_train),
      "valid": (self.x_valid, self.y_valid),
      "test": (self.x_test, self.y_test),
    }[name]

  def scored_on(self, name: str) -> Dataset:
    """What evaluators (which score `x_test` and fit on `x_train`) read to score the `name`
    split: that split in the place of the test split. For `test`, validation rows held out
    of the training split go back into it (nothing is read for rows on disk)."""
    if name == "test":
      if self.unsplit is None or self.valid_rows is None:
        return self
      rows = np.sort(np.concatenate([self.train_rows, self.valid_rows]))
      y = self.unsplit.y_train
      return dataclasses.replace(
        self, x_train=take(self.unsplit.x_train, rows), y_train=None if y is None else y[rows]
      )
    x, y = self.split(name)
    return dataclasses.replace(self, x_test=x, y_test=y)

  @property
  def example_shape(self) -> tuple[int, ...]:
    """(H, W, C) of an image or (D,) of a vector."""
    return tuple(int(d) for d in self.x_train.shape[1:])

  @property
  def is_image(self) -> bool:
    return self.x_train.ndim == 4

  @property
  def is_series(self) -> bool:
    return self.x_train.ndim == 3

  @property
  def is_text(self) -> bool:
    """Token ids [N, L] (integers; vectors are float32): `dlu.data.text`."""
    return self.x_train.ndim == 2 and np.issubdtype(self.x_train.dtype, np.integer)


_READ_CHUNK_BYTES = 64 << 20  # np.asarray of a RowArray reads this much at a time


class RowArray:
  """A read-only array [N, *example_shape] of `dtype` whose rows stay on disk until indexed.

  `rows` (optional): which stored rows this array holds, in order (a split of the stored rows).
  `transform` (optional): applied to every batch read, e.g. a table's fitted scaling (float
  [n, D] in, float32 [n, D] out; `dtype` is then float32). Subclasses read stored rows.
  """

  def __init__(
    self,
    num_stored: int,
    example_shape: Sequence[int],
    dtype: Any,
    *,
    rows: np.ndarray | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
  ):
    self.num_stored = int(num_stored)
    self.example_shape = tuple(int(d) for d in example_shape)
    self.stored_shape = self.example_shape
    self.stored_dtype = np.dtype(dtype)
    self.dtype = np.dtype(np.float32) if transform is not None else self.stored_dtype
    self.rows = None if rows is None else np.asarray(rows, np.int64)
    self.transform = transform
    self._row_bytes = int(np.prod(self.stored_shape)) * self.stored_dtype.itemsize

  def _read_stored(self, stored: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def view(
    self,
    rows: np.ndarray | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    dtype: Any = np.float32,
    example_shape: Sequence[int] | None = None,
  ) -> RowArray:
    """These rows (indices into this array; default all), reading nothing. `transform` runs
    after this array's own on every batch read and gives `dtype` rows of `example_shape`
    (default: unchanged)."""
    out = object.__new__(type(self))
    out.__dict__.update(self.__getstate__())
    if rows is not None:
      rows = np.asarray(rows, np.int64)
      out.rows = rows if self.rows is None else self.rows[rows]
    if transform is not None:
      out.transform = transform if self.transform is None else Chain(self.transform, transform)
      out.dtype = np.dtype(dtype)
      if example_shape is not None:
        out.example_shape = tuple(int(d) for d in example_shape)
    return out

  def __len__(self) -> int:
    return self.num_stored if self.rows is None else len(self.rows)

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self), *self.example_shape)

  @property
  def ndim(self) -> int:
    return 1 + len(self.example_shape)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape))

  @property
  def nbytes(self) -> int:
    return len(self) * int(np.prod(self.example_shape)) * self.dtype.itemsize

  def __getitem__(self, key: Any) -> np.ndarray:
    rest: tuple = ()
    if isinstance(key, tuple):  # e.g. (slice, slice, ...) from jax.make_array_from_callback
      key, rest = (key[0] if key else slice(None)), key[1:]
    if isinstance(key, (int, np.integer)):
      i = int(key) + (len(self) if key < 0 else 0)
      out = self.read(np.array([i]))[0]
    elif isinstance(key, slice):
      out = self.read(np.arange(*key.indices(len(self))))  # only the rows asked for
    else:
      idx = np.asarray(key)
      if idx.dtype == np.bool_:
        idx = np.flatnonzero(idx)
      out = self.read(idx.astype(np.int64).reshape(-1)).reshape(*idx.shape, *self.example_shape)
    return out[(slice(None), *rest)] if rest else out

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    step = max(1, _READ_CHUNK_BYTES // max(1, self._row_bytes))
    parts = [self.read(np.arange(s, min(s + step, len(self)))) for s in range(0, len(self), step)]
    out = np.concatenate(parts) if parts else np.zeros(self.shape, self.dtype)
    return out if dtype is None else out.astype(dtype)

  def astype(self, dtype: Any) -> np.ndarray:
    return np.asarray(self, dtype)

  def read(self, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` (indices into this array) as a new [len(idx), *example_shape] array."""
    idx = np.asarray(idx, np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
      raise IndexError(f"rows {idx.min()}..{idx.max()} are out of range for {len(self)} rows")
    out = self._read_stored(idx if self.rows is None else self.rows[idx])
    return self.transform(out) if self.transform is not None else out

  def __getstate__(self) -> dict:
    return dict(self.__dict__)


def take(x: Any, rows: np.ndarray) -> Any:
  """Rows `rows` of `x`: a copy of an array in memory, a view of a RowArray (nothing read)."""
  return x.view(rows) if isinstance(x, RowArray) else x[rows]


class Chain:
  """f then g, picklable (for transforms handed to worker processes)."""

  def __init__(self, f: Callable, g: Callable):
    self.f, self.g = f, g

  def __call__(self, x: np.ndarray) -> np.ndarray:
    return self.g(self.f(x))


def normalize(x: Any, pixel_range: str = "unit") -> Any:
  """Maps stored pixels to the model's input range.

  Only array methods are used, so numpy stays numpy, jax stays jax, and it traces under
  `jax.jit` (the dtype is static). Data stays uint8 until here: 4x less memory.
  """
  if pixel_range not in PIXEL_RANGES:
    raise UsageError(
      f"--pixel_range={pixel_range!r} is not supported; expected one of "
      f"{', '.join(repr(r) for r in PIXEL_RANGES)}"
    )
  if not hasattr(x, "dtype"):
    x = np.asarray(x)
  if x.dtype == np.uint8:
    x = x.astype(np.float32)
    # Written so that 0 and 255 land exactly on the ends of the range, also under XLA.
    return x / np.float32(255) if pixel_range == "unit" else (x * 2 - 255) / np.float32(255)
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:  # (bfloat16 is no np.floating)
    raise UsageError(f"normalize: expected uint8 or float pixels, got {x.dtype}")
  return x if pixel_range == "unit" else x * 2 - 1


# --- Checks shared by the local sources (npz, folder). ---


#: The most classes a labelled dataset may have (labels index arrays of this length).
MAX_CLASSES = 100_000


def _check_images(x: Any, what: str) -> np.ndarray:
  """`x` as [N, H, W, C] uint8, or float32 in [0, 1]; `what` names its origin in errors."""
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in VALID_CHANNELS:
    raise UsageError(
      f"{what} has shape {x.shape}; expected images [N, H, W] or [N, H, W, C] "
      f"with C in {', '.join(map(str, VALID_CHANNELS))}"
    )
  if x.shape[0] == 0 or 0 in x.shape[1:3]:
    raise UsageError(f"{what} is empty (shape {x.shape})")
  if x.dtype == np.uint8:
    return x
  if not np.issubdtype(x.dtype, np.floating):
    raise UsageError(f"{what} has dtype {x.dtype}; expected uint8 in 0..255 or float in [0, 1]")
  x = x.astype(np.float32)
  for bad, name in ((np.isnan(x), "NaN"), (np.isinf(x), "infinite values")):
    if bad.any():
      first = tuple(int(i) for i in np.argwhere(bad)[0])
      raise UsageError(
        f"{what} holds {name} ({int(bad.sum())} of them, the first at index {first}); "
        "expected uint8 in 0..255 or float in [0, 1]"
      )
  if not np.all((x >= 0) & (x <= 1)):
    raise UsageError(
      f"{what} is float with values outside [0, 1] (min {np.nanmin(x):g}, max "
      f"{np.nanmax(x):g}); expected uint8 in 0..255 or float in [0, 1]"
    )
  return x


def _check_labels(y: Any, num_examples: int, what: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1 or len(y) != num_examples:
    raise UsageError(f"{what} has shape {y.shape}; expected ({num_examples},), one label per image")
  if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
    raise UsageError(f"{what} has dtype {y.dtype}; expected integer class indices")
  if y.min() < 0:
    raise UsageError(f"{what} has negative labels (min {y.min()}); expected class indices 0..K-1")
  if y.max() >= MAX_CLASSES:
    raise UsageError(
      f"{what} has a label {y.max()}; expected class indices 0..K-1 with K <= {MAX_CLASSES:,}"
    )
  return y.astype(np.int32)


def held_out_rows(n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) rows of an image source without a test split: a fixed shuffle (seed 0) whose
  last 10% (at least one) is the test split, the same in every run."""
  if n < 2:
    raise UsageError(f"{what} has {n} image; at least 2 are needed to hold out a test split")
  perm = np.random.default_rng(0).permutation(n)
  num_test = max(1, int(n * HELD_OUT_FRACTION))
  return perm[:-num_test], perm[-num_test:]


def _held_out_split(x: np.ndarray, y: np.ndarray | None, what: str) -> tuple[Any, Any, Any, Any]:
  train, test = held_out_rows(len(x), what)
  return x[train], None if y is None else y[train], x[test], None if y is None else y[test]


def assemble(
  name: str,
  what: str,
  x: Any,
  y: Any = None,
  x_test: Any = None,
  y_test: Any = None,
  num_classes: int | None = None,
) -> Dataset:
  """Validates a local source's arrays; holds out a test split when none is given."""
  x = _check_images(x, f"{what}: x")
  y = None if y is None else _check_labels(y, len(x), f"{what}: y")
  if x_test is None:
    if y_test is not None:
      raise UsageError(f"{what}: has y_test but no x_test")
    x, y, x_test, y_test = _held_out_split(x, y, what)
  else:
    x_test = _check_images(x_test, f"{what}: x_test")
    if x_test.shape[1:] != x.shape[1:]:
      raise UsageError(
        f"{what}: x_test images are {'x'.join(map(str, x_test.shape[1:]))} but x images "
        f"are {'x'.join(map(str, x.shape[1:]))} (HxWxC); both need the same shape"
      )
    if x_test.dtype != x.dtype:
      raise UsageError(
        f"{what}: x_test is {x_test.dtype} but x is {x.dtype}; both need the same dtype"
      )
    if (y is None) != (y_test is None):
      raise UsageError(f"{what}: labels for only one split; give both y and y_test, or neither")
    y_test = None if y_test is None else _check_labels(y_test, len(x_test), f"{what}: y_test")
  if y is not None and num_classes is None:
    num_classes = int(max(y.max(initial=0), y_test.max(initial=0))) + 1
  return Dataset(
    name=name,
    x_train=x,
    y_train=y,
    x_test=x_test,
    y_test=y_test,
    num_classes=num_classes if y is not None else None,
  )
