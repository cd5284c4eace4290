"""A --dataset written once as a records directory, so `--dataset=records:OUT` reads it by row.

What is stored makes `records:OUT` the same Dataset as its source:

  folder:DIR    every image [H, W, C] uint8 in sorted file order as split `all`, labels from
                the sub-folders (class_names); the test split is held out when read, as for
                the folder.
  csv:, parquet: the raw features (float64, NaN for missing cells) in file row order as `all`,
                with the columns, the label column and the classes: split, imputed and scaled
                when read, as the table is.
  npz:PATH      images or vectors (columns f0, f1, ...) as `all`, or `train` and `test` when the
                archive has x_test.
  series:PATH   the series as read [T, C] float64, padded with NaN to the longest, as `all` (a
                file) or `train` and `test` (a directory's NAME_TRAIN / NAME_TEST files), with
                the classes: resampled and scaled when read, as the series are.
  other names   (digits, fashion_mnist, any tfds dataset) their `train` and `test` splits.

Folders are decoded in worker processes, one shard each at a time; sources already in memory
are written by threads. `dlu.data.writer` keeps the preparation resumable.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from dlu.data import arrays, local, records, series, sources, tables, writer
from dlu.errors import UsageError

SKIPPED_FILE = "skipped.txt"


@dataclasses.dataclass
class Source:
  """What a source's rows are, and how to write rows start..stop of a split as a shard: a job
  `shard(split, start, stop)(path)` that writes them with `writer.write_shard` and returns the
  rows it skipped ([index, file, reason] lists). With `processes` the jobs must pickle."""

  kind: str  # "images" or "vectors"
  example_shape: tuple[int, ...]
  dtype: str
  rows: dict[str, int]  # split -> rows (before any are skipped)
  labels: dict[str, np.ndarray | None]  # split -> int32 [rows] or None
  shard: Callable[[str, int, int], Callable[[str], list]]  # (split, start, stop) -> job
  fingerprint: str = ""
  processes: bool = False  # decoding is the work: jobs in worker processes
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # other Meta fields


def prepare_records(
  dataset: str,
  out: str,
  *,
  label_column: str | None = None,
  num_shards: int | None = None,
  workers: int | None = None,
  skip_bad: bool = False,
  data_dir: str | None = None,
  idx_dir: str | None = None,
) -> str:
  """Writes `dataset` (any --dataset form read into memory) as records in `out`; a summary.

  Resumes an unfinished preparation of the same source in `out`, and does nothing when `out`
  holds its finished records. Bad input is a UsageError raised before `out` is touched; an
  undecodable image (unless `skip_bad`: skipped, counted and listed in OUT/skipped.txt) or an
  image of another shape is one raised while writing, naming its file and index.
  num_shards: per split (default: about 128 MB each, for folders at least one per worker).
  workers: processes decoding a folder, threads writing other sources (default: the CPUs).
  """
  started = time.monotonic()
  dataset = dataset.strip() if isinstance(dataset, str) else dataset
  what = f"--dataset={dataset}"
  kind, arg = sources._parse(dataset)  # the one parser of --dataset forms
  if not out:
    raise UsageError("--out=DIR is needed: the directory the records are written to")
  out = os.path.abspath(os.path.expanduser(out))
  if kind in ("records", "npy"):
    raise UsageError(f"{what} is read by row already; there is nothing to prepare")
  if kind == "text":
    raise UsageError(
      f"{what}: records of documents are not written (their tokeniser is fitted on the training "
      "split when a run reads them); train on the text: source itself"
    )
  if label_column and kind not in (*tables.TABLE_FORMATS, "series"):
    raise UsageError(
      f"--label_column names a column of a table (csv:, parquet:, json:) or of a series:PATH "
      f"table; {what} is not one"
    )
  if num_shards is not None and num_shards < 1:
    raise UsageError(f"--num_shards={num_shards}: expected at least 1")
  workers = writer.default_workers() if workers is None else workers
  if workers < 1:
    raise UsageError(f"--workers={workers}: expected at least 1")
  source_name = f"{kind}:{os.path.abspath(arg)}" if arg else dataset
  fingerprint, count = _source_fingerprint(dataset, kind, arg)
  done = writer.finished(
    out, source_name, label_column, what, fingerprint=fingerprint, source_files=count
  )
  if done is not None:
    return _already(out, source_name, done, fingerprint)

  src = _read_source(dataset, kind, arg, label_column, skip_bad, data_dir, idx_dir)
  return write_source(
    src,
    out,
    source=source_name,
    what=what,
    label_column=label_column,
    num_shards=num_shards,
    workers=workers,
    started=started,
  )


def write_source(
  src: Source,
  out: str,
  *,
  source: str,
  what: str,
  label_column: str | None = None,
  num_shards: int | None = None,
  workers: int | None = None,
  started: float | None = None,
) -> str:
  """Writes `src` as records in `out` (resuming, or doing nothing when they are there); a
  summary. `source` names it in dataset.json (`Meta.source`)."""
  started = time.monotonic() if started is None else started
  out = os.path.abspath(os.path.expanduser(out))
  workers = writer.default_workers() if workers is None else workers
  done = writer.finished(
    out,
    source,
    label_column,
    what,
    fingerprint=src.fingerprint,
    source_files=src.meta.get("source_files"),
  )
  if done is not None:
    return _already(out, source, done, src.fingerprint)
  stored = writer.read_plan(out) if os.path.isdir(out) else None
  row_bytes = int(np.prod(src.example_shape)) * np.dtype(src.dtype).itemsize
  splits = {}
  for split, n in src.rows.items():
    if num_shards is not None:
      shards = max(1, min(num_shards, n))
    elif stored and stored.get("splits", {}).get(split, {}).get("rows") == n:
      shards = stored["splits"][split]["shards"]  # resumed as it began
    else:
      shards = writer.num_shards(n, row_bytes, at_least=workers if src.processes else 1)
    splits[split] = {"rows": n, "shards": shards}
  plan = {
    "source": source,
    "label_column": label_column,
    "fingerprint": src.fingerprint,
    "kind": src.kind,
    "example_shape": list(src.example_shape),
    "dtype": src.dtype,
    "splits": splits,
  }
  if writer.check_out(out, plan) == "new":
    writer.begin(out, plan)
  jobs = {
    split: writer.jobs_for(split, info["rows"], info["shards"], functools.partial(src.shard, split))
    for split, info in splits.items()
  }
  every = [job for js in jobs.values() for job in js]
  skipped = writer.run(out, every, workers=workers, processes=src.processes)

  described, bad = {}, []
  for split, js in jobs.items():
    dropped = [row for job in js for row in skipped[job.name]]
    bad += dropped
    kept = np.setdiff1d(np.arange(src.rows[split]), [row[0] for row in dropped])
    y = None if src.labels[split] is None else src.labels[split][kept]
    described[split] = {
      "num_examples": int(len(kept)),
      "shards": [job.name for job in js],
      **records.save_labels(out, split, y),
    }
  if bad:
    with open(os.path.join(out, SKIPPED_FILE), "w", encoding="utf-8") as f:
      f.writelines(f"{i}\t{path}\t{reason}\n" for i, path, reason in bad)
  meta = records.Meta(
    kind=src.kind,
    example_shape=src.example_shape,
    dtype=src.dtype,
    splits=described,
    label_column=label_column,
    source=source,
    skipped=len(bad),
    fingerprint=src.fingerprint,
    **src.meta,
  )
  writer.finish(out, meta, every)
  rows = sum(s["num_examples"] for s in described.values())
  shape = "x".join(map(str, src.example_shape))
  note = f"; skipped {len(bad)} bad image(s), listed in {SKIPPED_FILE}" if bad else ""
  return (
    f"{what}: {rows:,} rows of {shape} {src.dtype} in {len(every)} shard(s) in {out} "
    f"({time.monotonic() - started:.1f} s){note}; read them with --dataset=records:{out}"
  )


def _already(out: str, source: str, done: records.Meta, fingerprint: str) -> str:
  rows = sum(s["num_examples"] for s in done.splits.values())
  unchecked = (
    " (prepared before sources were fingerprinted: its files were not compared)"
    if fingerprint and not done.fingerprint
    else ""
  )
  return f"{out} holds the prepared {source} already ({rows:,} rows){unchecked}; nothing to do"


def _read_source(
  dataset: str,
  kind: str,
  arg: str,
  label_column: str | None,
  skip_bad: bool,
  data_dir: str | None,
  idx_dir: str | None,
) -> Source:
  what = f"--dataset={dataset}"
  if kind == "folder":
    return _folder(dataset, arg, skip_bad)
  if kind in tables.TABLE_FORMATS:
    try:
      columns, x, raw = tables.read_table(arg, fmt=kind, label_column=label_column, what=what)
    except UsageError as e:
      if "not a number" not in str(e) and "not numbers" not in str(e):
        raise
      raise UsageError(
        f"{e}; records hold tables of numbers only: train on --dataset={dataset} itself (a "
        "table with text columns is read into memory, its categories encoded)"
      ) from None
    y, meta = None, {"columns": columns}
    if raw is not None:
      y, classes = tables.encode_labels(raw, f"{what}: label column {label_column!r}")
      meta.update(num_classes=len(classes), class_names=list(classes))
    return _in_memory({"all": (x, y)}, meta, _file_fingerprint(arg))
  if kind == "series":
    return _series(what, arg, label_column)
  if kind == "npz":
    found = local.read_npz(dataset, arg)
    if np.asarray(found["x"]).ndim == 2:
      return _npz_vectors(what, found, _file_fingerprint(arg))
    data = local.load_npz(dataset, arg, found)
    if "x_test" in found:
      return _from_dataset(data, _file_fingerprint(arg))
    train, test = arrays.held_out_rows(len(data.x_train) + len(data.x_test), what)
    x = _unsplit(data.x_train, data.x_test, train, test)
    y = None if data.y_train is None else _unsplit(data.y_train, data.y_test, train, test)
    meta = {"num_classes": data.num_classes}
    return _in_memory({"all": (x, y)}, meta, _file_fingerprint(arg))
  data = sources.load(dataset, data_dir=data_dir, idx_dir=idx_dir)
  return _from_dataset(data, "")


def _series(what: str, path: str, label_column: str | None) -> Source:
  """Series as read (before any resampling or scaling: that is fitted when they are read),
  padded with NaN to the longest of every split, labels encoded over both splits."""
  parts = series.read_source(path, what, label_column)
  for raw in parts.values():
    series.check_channels(raw, what)  # one count of channels in each split
  length = max(len(s) for raw in parts.values() for s in raw.series)
  x = {k: series.padded(raw.series, length) for k, raw in parts.items()}
  y = {k: None for k in parts}
  meta: dict[str, Any] = {"source_files": len(parts)}
  if next(iter(parts.values())).labels is not None:
    codes, classes = tables.encode_labels(
      np.concatenate([raw.labels for raw in parts.values()]), f"{what}: labels"
    )
    bounds = np.cumsum([0] + [len(raw.series) for raw in parts.values()])
    y = {k: codes[bounds[i] : bounds[i + 1]] for i, k in enumerate(parts)}
    meta.update(num_classes=len(classes), class_names=list(classes))
  return _in_memory(
    {k: (x[k], y[k]) for k in parts}, meta, _series_fingerprint(path, what), kind="series"
  )


def _series_fingerprint(path: str, what: str) -> str:
  return ";".join(_file_fingerprint(f) for f in series.source_files(path, what).values())


def _from_dataset(data: arrays.Dataset, fingerprint: str) -> Source:
  splits = {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}
  return _in_memory(splits, {"num_classes": data.num_classes}, fingerprint)


def _npz_vectors(what: str, found: dict[str, np.ndarray], fingerprint: str) -> Source:
  """Vectors as `sources` reads them from an npz: columns f0.., labels encoded over both splits
  (no class names: the in-memory form keeps none)."""
  columns, x = tables.vectors_from_arrays(found["x"], what)
  y, y_test = found.get("y"), found.get("y_test")
  splits = {"all": (x, y)}
  if "x_test" in found:
    _, x_test = tables.vectors_from_arrays(found["x_test"], f"{what}: x_test")
    if x_test.shape[1] != x.shape[1]:
      raise UsageError(f"{what}: x has {x.shape[1]} columns but x_test {x_test.shape[1]}")
    if (y is None) != (y_test is None):
      raise UsageError(f"{what}: labels for only one split; give both y and y_test, or neither")
    splits = {"train": (x, y), "test": (x_test, y_test)}
  meta: dict[str, Any] = {"columns": columns}
  if y is not None:
    raw = [np.asarray(v) for _, v in splits.values()]
    if any(v.ndim != 1 or len(v) != len(s[0]) for v, s in zip(raw, splits.values(), strict=True)):
      raise UsageError(f"{what}: y and y_test need one label per row of x and x_test")
    codes, classes = tables.encode_labels(np.concatenate(raw), f"{what}: y")
    bounds = np.cumsum([0] + [len(v) for v in raw])
    splits = {
      name: (s[0], codes[bounds[k] : bounds[k + 1]]) for k, (name, s) in enumerate(splits.items())
    }
    meta["num_classes"] = len(classes)
  return _in_memory(splits, meta, fingerprint)


def _unsplit(a: np.ndarray, b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
  out = np.empty((len(a) + len(b), *a.shape[1:]), a.dtype)
  out[rows_a], out[rows_b] = a, b
  return out


def _in_memory(
  splits: dict[str, tuple[np.ndarray, np.ndarray | None]],
  meta: dict[str, Any],
  fingerprint: str,
  kind: str | None = None,
) -> Source:
  first = next(iter(splits.values()))[0]
  return Source(
    kind=kind or ("images" if first.ndim == 4 else "vectors"),
    example_shape=tuple(int(d) for d in first.shape[1:]),
    dtype=str(first.dtype),
    rows={name: len(x) for name, (x, _) in splits.items()},
    labels={
      name: None if y is None else np.asarray(y, np.int32) for name, (_, y) in splits.items()
    },
    shard=lambda split, start, stop: functools.partial(_array_shard, splits[split][0][start:stop]),
    fingerprint=fingerprint,
    meta=meta,
  )


def _array_shard(x: np.ndarray, path: str) -> list:
  writer.write_shard(path, x)
  return []


def _folder(dataset: str, directory: str, skip_bad: bool) -> Source:
  """Files listed and the first image decoded (its shape is every image's) before OUT is
  touched; the rest are decoded by the shard jobs."""
  what = f"--dataset={dataset}"
  files, labels, class_names = local.list_folder(dataset, directory)
  first = 0
  while True:
    try:
      shape = local.decode_image(files[first], what).shape
      break
    except UsageError as e:
      if not skip_bad:
        raise UsageError(_bad_image(e, first)) from e
      first += 1
      if first == len(files):
        raise UsageError(f"{what}: none of the {len(files)} images can be decoded") from e
  meta: dict[str, Any] = {"source_files": len(files)}
  if class_names is not None:
    meta.update(num_classes=len(class_names), class_names=class_names)
  return Source(
    kind="images",
    example_shape=tuple(shape),
    dtype="uint8",
    rows={"all": len(files)},
    labels={"all": labels},
    shard=lambda split, start, stop: functools.partial(
      _image_shard, files[start:stop], start, files[first], shape, skip_bad, what
    ),
    fingerprint=_files_fingerprint(files, directory),
    processes=True,
    meta=meta,
  )


def _image_shard(
  files: list[str], start: int, first: str, shape: tuple, skip_bad: bool, what: str, path: str
) -> list:
  """Decodes `files` (rows start.. of the folder) into the shard `path`; the skipped rows."""
  skipped = []

  def rows():
    for k, file in enumerate(files):
      try:
        x = local.decode_image(file, what)
      except UsageError as e:
        if not skip_bad:
          raise UsageError(_bad_image(e, start + k)) from None
        skipped.append([start + k, file, str(e)])
        writer.skipped_row()
        continue
      if x.shape != shape:
        message = local.shape_mismatch(what, first, shape, file, x.shape)
        raise UsageError(f"{message} (image {start + k} in file order)")
      yield x

  writer.write_shard(path, rows())
  return skipped


def _bad_image(error: UsageError, index: int) -> str:
  return f"{error}: image {index} in file order; --skip_bad skips and counts such images"


def _files_fingerprint(files: list[str], directory: str) -> str:
  """sha256 of each file's path (within `directory`), size and modification time."""
  digest = hashlib.sha256()
  for path in files:
    st = os.stat(path)
    digest.update(f"{os.path.relpath(path, directory)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def _source_fingerprint(dataset: str, kind: str, arg: str) -> tuple[str, int | None]:
  """(fingerprint, files) of a source as it is now, to compare with finished records; ("",
  None) for sources without files of their own (tfds, digits) or with a file missing."""
  if kind == "folder":
    files = local.list_folder(dataset, arg)[0]
    return _files_fingerprint(files, arg), len(files)
  if kind in (*tables.TABLE_FORMATS, "npz") and os.path.isfile(arg):
    return _file_fingerprint(arg), 1
  if kind == "series" and os.path.exists(arg):
    what = f"--dataset={dataset}"
    return _series_fingerprint(arg, what), len(series.source_files(arg, what))
  return "", None


def _file_fingerprint(path: str) -> str:
  st = os.stat(path)
  return f"{st.st_size}:{st.st_mtime_ns}"
