"""Datasets kept on disk as ArrayRecord shards and read by row, never whole into memory.

A records directory (written by `experiments.prepare_data` or `write`) holds:

  dataset.json                      what the rows are (see `Meta`)
  SPLIT-00000-of-00004.array_record one record per row: the example's raw bytes, C order
  labels_SPLIT.npy                  [N] int32 class indices, when the data are labelled (their
                                    sha256 in dataset.json, checked when they are read)

SPLIT is `all` (a source without a test split; `--dataset=records:DIR` holds the test split out
exactly as the in-memory source would) or `train` and `test`. Rows are stored raw (uint8 pixels,
or a table's float64 features before imputation and scaling): reading a row is one copy, no
decoding.

`RecordArray` is a read-only [N, ...] array over the shards: `x[i]`, `x[a:b]` and `x[rows]` read
only those rows, so the training loop, the evaluators and worker processes index it like a NumPy
array. It pickles as its file names, so it can be handed to worker processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from dlu import files
from dlu.data.arrays import RowArray
from dlu.errors import UsageError

META_FILE = "dataset.json"
FORMAT = "dlu-records/1"
SPLITS = ("all", "train", "test")
# One record per chunk: reading a row decompresses nothing else.
WRITER_OPTIONS = "group_size:1,uncompressed"


@dataclasses.dataclass(frozen=True)
class Meta:
  """dataset.json: what every row is, and where each split's rows are."""

  kind: str  # "images" ([H, W, C] uint8), "vectors" ([D] float32) or "series" ([T, C] float64)
  example_shape: tuple[int, ...]
  dtype: str
  splits: dict[str, dict[str, Any]]  # name -> {"num_examples", "shards", "labels"}
  num_classes: int | None = None
  class_names: list[str] | None = None
  columns: list[str] | None = None  # a table's feature columns, in stored order
  label_column: str | None = None
  source: str = ""
  skipped: int = 0  # source rows left out as unreadable (experiments.prepare_data --skip_bad)
  # What the source's files were when prepared (sizes and mtimes; "" when unknown), and how many.
  fingerprint: str = ""
  source_files: int | None = None

  def to_json(self) -> str:
    out = dataclasses.asdict(self)
    out["example_shape"] = list(self.example_shape)
    return json.dumps({"format": FORMAT, **out}, indent=2)

  @classmethod
  def load(cls, directory: str) -> Meta:
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
      raise UsageError(
        f"--dataset=records:{directory}: no {META_FILE} there; write records with "
        "`python -m experiments.prepare_data --dataset=... --out=DIR`"
      )
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
      if raw.pop("format", None) != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
      meta = cls(**{**raw, "example_shape": tuple(raw["example_shape"])})
    except (OSError, ValueError, TypeError, KeyError) as e:
      raise UsageError(f"{path} is not a readable records description: {e}") from e
    if meta.kind not in ("images", "vectors", "series") or not set(meta.splits) <= set(SPLITS):
      raise UsageError(f"{path}: kind {meta.kind!r} or splits {sorted(meta.splits)} not understood")
    return meta


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


class RecordArray(RowArray):
  """Rows stored one record each in ArrayRecord shards `paths`; it pickles as their names."""

  def __init__(self, paths: Sequence[str], example_shape: Sequence[int], dtype: Any, **kwargs: Any):
    self.paths = [os.path.abspath(p) for p in paths]
    self._source = None
    super().__init__(len(self._reader()), example_shape, dtype, **kwargs)

  def _read_stored(self, stored: np.ndarray) -> np.ndarray:
    reader = self._reader()
    try:
      records = reader.__getitems__(stored.tolist()) if len(stored) else []
    except Exception:  # a damaged chunk: find and name the first unreadable record
      for i in stored.tolist():
        try:
          reader[i]
        except Exception as e:
          raise UsageError(f"{self._where()}: record {i} cannot be read ({e})") from e
      raise
    for i, r in zip(stored.tolist(), records, strict=True):
      if len(r) != self._row_bytes:
        raise UsageError(
          f"{self._where()}: record {i} holds {len(r)} bytes; a row of {self.stored_shape} "
          f"{self.stored_dtype} is {self._row_bytes} (the file is damaged)"
        )
    flat = np.frombuffer(b"".join(records), self.stored_dtype)
    return flat.reshape(len(stored), *self.stored_shape).copy()  # writable, own memory

  def _reader(self):
    if self._source is None:
      from array_record.python import array_record_data_source

      missing = [p for p in self.paths if not os.path.isfile(p)]
      if missing:
        raise UsageError(f"the records shard {missing[0]} is missing")
      try:
        self._source = array_record_data_source.ArrayRecordDataSource(self.paths)
      except Exception as e:  # array_record raises plain RuntimeErrors/ValueErrors
        raise UsageError(f"cannot open the records in {self._where()}: {e}") from e
    return self._source

  def _where(self) -> str:
    return os.path.dirname(self.paths[0]) if self.paths else "records"

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_source": None}

  def __repr__(self) -> str:
    return f"RecordArray(shape={self.shape}, dtype={self.dtype}, shards={len(self.paths)})"


class NpyArray(RowArray):
  """Rows of a .npy file, memory-mapped; it pickles as the file's name."""

  def __init__(self, path: str, **kwargs: Any):
    self.path = os.path.abspath(path)
    self._map = None
    m = self._mapped()
    super().__init__(m.shape[0], m.shape[1:], m.dtype, **kwargs)

  def _mapped(self) -> np.ndarray:
    if self._map is None:
      try:
        self._map = np.load(self.path, mmap_mode="r", allow_pickle=False)
      except (OSError, ValueError) as e:
        raise UsageError(f"{self.path} is not a readable .npy array: {e}") from e
      if self._map.ndim < 2:
        raise UsageError(f"{self.path} has shape {self._map.shape}; expected [N, ...] rows")
    return self._map

  def _read_stored(self, stored: np.ndarray) -> np.ndarray:
    m = self._mapped()
    if len(stored) and np.all(np.diff(stored) == 1):  # one contiguous read
      return np.array(m[stored[0] : stored[-1] + 1])
    return m[np.sort(stored)][np.argsort(np.argsort(stored))] if len(stored) else m[:0].copy()

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_map": None}

  def __repr__(self) -> str:
    return f"NpyArray({self.path}, shape={self.shape}, dtype={self.dtype})"


def open_split(directory: str, meta: Meta, split: str) -> tuple[RecordArray, np.ndarray | None]:
  """A split's rows and its labels ([N] int32, or None)."""
  info = meta.splits[split]
  paths = [os.path.join(directory, s) for s in info["shards"]]
  x = RecordArray(paths, meta.example_shape, meta.dtype)
  if len(x) != info["num_examples"]:
    raise UsageError(
      f"{directory}: the {split} shards hold {len(x)} records but {META_FILE} says "
      f"{info['num_examples']} (an unfinished or damaged preparation)"
    )
  y = None
  if info.get("labels"):
    path = os.path.join(directory, info["labels"])
    expected = info.get("labels_sha256")
    try:
      changed = bool(expected) and _sha256(path) != expected
      y = None if changed else np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise UsageError(f"{path} is not a readable labels file: {e}") from e
    if changed:
      raise UsageError(
        f"{path} has changed since it was written (checksum mismatch); prepare the records again"
      )
    if y.shape != (len(x),):
      raise UsageError(f"{directory}: {info['labels']} has shape {y.shape}; expected ({len(x)},)")
    y = y.astype(np.int32)
  return x, y


def open_rows(directory: str) -> tuple[RecordArray, Meta]:
  """Every stored row of a records directory, unsplit (train then test when it has both)."""
  meta = Meta.load(directory)
  names = [n for n in SPLITS if n in meta.splits]
  paths = [os.path.join(directory, s) for n in names for s in meta.splits[n]["shards"]]
  return RecordArray(paths, meta.example_shape, meta.dtype), meta


def write_shard(path: str, rows: Iterable[np.ndarray]) -> int:
  """Writes rows (arrays of one shape and dtype) as one shard, atomically; returns the count."""
  from array_record.python import array_record_module

  count = 0

  def write_rows(tmp: str) -> None:
    nonlocal count
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for row in rows:
        writer.write(np.ascontiguousarray(row).tobytes())
        count += 1
    finally:
      writer.close()

  files.atomic_save(path, write_rows)
  return count


def write(
  directory: str,
  splits: dict[str, tuple[np.ndarray, np.ndarray | None]],
  *,
  num_shards: int = 1,
  **meta: Any,
) -> Meta:
  """Writes in-memory splits {name: (x, y)} as a records directory; returns its Meta.

  `meta`: the other Meta fields (num_classes, class_names, columns, label_column, source).
  """
  os.makedirs(directory, exist_ok=True)
  first = next(iter(splits.values()))[0]
  kind = "images" if first.ndim == 4 else "vectors"
  described = {}
  for name, (x, y) in splits.items():
    shards = min(num_shards, max(1, len(x)))
    bounds = np.linspace(0, len(x), shards + 1).astype(int)
    names = [shard_name(name, i, shards) for i in range(shards)]
    for i, shard in enumerate(names):
      write_shard(os.path.join(directory, shard), x[bounds[i] : bounds[i + 1]])
    described[name] = {"num_examples": int(len(x)), "shards": names}
    described[name].update(save_labels(directory, name, y))
  out = Meta(
    kind=kind,
    example_shape=tuple(int(d) for d in first.shape[1:]),
    dtype=str(first.dtype),
    splits=described,
    **meta,
  )
  write_meta(directory, out)
  return out


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def save_labels(directory: str, split: str, y: np.ndarray | None) -> dict[str, Any]:
  """labels_SPLIT.npy (int32, written atomically) and its checksum, as a split's entries of
  dataset.json: {"labels", "labels_sha256"} ({"labels": None} without labels)."""
  if y is None:
    return {"labels": None}
  name = f"labels_{split}.npy"
  path = os.path.join(directory, name)
  files.atomic_save(path, lambda tmp: np.save(tmp, np.asarray(y, np.int32)), suffix=".npy")
  return {"labels": name, "labels_sha256": _sha256(path)}


def write_meta(directory: str, meta: Meta) -> None:
  """dataset.json last and atomically: a directory without it is an unfinished preparation."""
  path = os.path.join(directory, META_FILE)
  with files.atomic_write(path) as f:
    f.write(meta.to_json())
