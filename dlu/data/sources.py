"""The entry points: a --dataset string parsed, handed to its source, and described.

"digits", "npz:PATH" (images) and "folder:DIR" are read by dlu.data.local; "csv:PATH",
"parquet:PATH" and npz vectors [N, D] by dlu.data.tables; "records:DIR" (ArrayRecord shards that
experiments.prepare_data wrote) and "npy:PATH" (memory-mapped) stay on disk, read by row
(dlu.data.records); any other name is a tfds dataset, read (and prepared when it must be) by
dlu.data.tfds_offline.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np
import pyarrow as pa

from dlu.data import fingerprints, local, preprocessing, records, series, tables, text, tfds_offline
from dlu.data.arrays import ACCEPTED_FORMS, Dataset, held_out_rows
from dlu.errors import UsageError

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def default_data_dir() -> str:
  """Where tfds keeps prepared datasets unless told otherwise: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _parse(dataset: str) -> tuple[str, str]:
  """(kind, argument): ("digits", ""), ("npz" | "csv" | "parquet" | "json", path), ("folder", dir) or
  ("tfds", name)."""
  if not isinstance(dataset, str) or not dataset.strip():
    raise UsageError(f"--dataset is empty; expected one of: {ACCEPTED_FORMS}")
  dataset = dataset.strip()
  if dataset == "digits":
    return "digits", ""
  for kind, arg in (
    ("npz", "PATH"),
    ("folder", "DIR"),
    ("csv", "PATH"),
    ("parquet", "PATH"),
    ("json", "PATH"),
    ("records", "DIR"),
    ("npy", "PATH"),
    ("series", "PATH"),
    ("text", "PATH"),
  ):
    if dataset.startswith(kind + ":"):
      if not dataset[len(kind) + 1 :]:
        raise UsageError(
          f"--dataset={dataset} names no {'file' if arg == 'PATH' else 'directory'}; "
          f"expected {kind}:{arg}"
        )
      return kind, os.path.expanduser(dataset[len(kind) + 1 :])
  return "tfds", dataset


def _data_dir(data_dir: str | None) -> str:
  """An explicit --data_dir must exist (a typo should not scatter data); the default is created."""
  if data_dir:
    if not os.path.isdir(os.path.expanduser(data_dir)):
      raise UsageError(
        f"--data_dir={data_dir} does not exist; create it, or leave --data_dir unset "
        f"to use {default_data_dir()}"
      )
    return os.path.expanduser(data_dir)
  path = default_data_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UsageError(
      f"--data_dir: cannot create the default data directory {path} ({e}); "
      "set --data_dir or $TFDS_DATA_DIR to a writable directory"
    ) from e
  return path


@dataclasses.dataclass(frozen=True)
class TableOptions:
  """How tables and vectors become model inputs (the --label_column, --test_fraction,
  --impute and --feature_scaling flags); `preprocessing`: a run's stored one, applied as is."""

  label_column: str | None = None
  test_fraction: float = 0.1
  seed: int = 0
  impute: str = "none"
  feature_scaling: str = "standard"
  preprocessing: Any = None
  model_imputes: bool = False  # --impute=auto: the model takes missing cells (a mask)
  series_length: int = 0  # series: resample every series to this length; 0 pads to the longest
  series_scaling: str = "znorm"
  overrides: Any = None  # tables: a dlu.data.columns.Overrides (column kinds, drops, the id)
  encoding: str | None = None  # csv/json tables: the file's text encoding (default UTF-8)
  text: Any = None  # text: a dlu.data.text.TextOptions (column, tokeniser, length)
  embed_levels: int = 0  # tables: a category of more levels is embedded (0: all one-hot)


def _vectors(dataset: str, what: str, arrays: dict[str, np.ndarray], opts: TableOptions) -> Dataset:
  """npz vectors x [N, D] (optional y, x_test, y_test), preprocessed like a table."""
  columns, x = tables.vectors_from_arrays(arrays["x"], what)
  y = arrays.get("y")
  if "x_test" in arrays:
    _, x_test = tables.vectors_from_arrays(arrays["x_test"], f"{what}: x_test")
    y_test = arrays.get("y_test")
    if (y is None) != (y_test is None):
      raise UsageError(f"{what}: labels for only one split; give both y and y_test, or neither")
  else:
    train, test = tables.split_rows(len(x), opts.test_fraction, opts.seed, what)
    x, x_test = x[train], x[test]
    y, y_test = (None, None) if y is None else (y[train], y[test])
  if x_test.shape[1] != x.shape[1]:
    raise UsageError(f"{what}: x has {x.shape[1]} columns but x_test {x_test.shape[1]}")
  pre = opts.preprocessing or preprocessing.fit_preprocessing(
    columns,
    x,
    impute=opts.impute,
    scaling=opts.feature_scaling,
    what=what,
    model_imputes=opts.model_imputes,
  )
  labels, num_classes = [None, None], None
  if y is not None:
    if np.ndim(y) != 1 or len(y) != len(x) or np.ndim(y_test) != 1 or len(y_test) != len(x_test):
      raise UsageError(f"{what}: y and y_test need one label per row of x and x_test")
    codes, classes = tables.encode_labels(np.concatenate([y, y_test]), f"{what}: y")
    labels, num_classes = [codes[: len(y)], codes[len(y) :]], len(classes)
  return Dataset(
    dataset,
    pre.transform(x, f"{what}: x"),
    labels[0],
    pre.transform(x_test, f"{what}: x_test"),
    labels[1],
    num_classes,
    preprocessing=pre,
  )


def _table(dataset: str, kind: str, path: str, opts: TableOptions) -> Dataset:
  what = f"--dataset={dataset}"
  out = tables.load_table(
    path,
    fmt=kind,
    what=what,
    label_column=opts.label_column,
    test_fraction=opts.test_fraction,
    seed=opts.seed,
    impute=opts.impute,
    feature_scaling=opts.feature_scaling,
    preprocessing=opts.preprocessing,
    model_imputes=opts.model_imputes,
    overrides=opts.overrides,
    encoding=opts.encoding,
    embed_levels=opts.embed_levels,
  )
  return Dataset(
    dataset,
    out["x_train"],
    out["y_train"],
    out["x_test"],
    out["y_test"],
    out["num_classes"],
    preprocessing=out["preprocessing"],
    row_digests=out["row_digests"],
    fingerprint=out["fingerprint"],
  )


def _series(dataset: str, path: str, opts: TableOptions) -> Dataset:
  """series:PATH: a file split by --test_fraction, or a directory's NAME_TRAIN/NAME_TEST files."""
  what = f"--dataset={dataset}"
  parts = series.read_source(path, what, opts.label_column)
  if "all" in parts:
    raw = parts["all"]
    train, test = tables.split_rows(len(raw.series), opts.test_fraction, opts.seed, what)
    pick = lambda rows: series.RawSeries(
      [raw.series[i] for i in rows], None if raw.labels is None else raw.labels[rows], raw.path
    )
    parts = {"train": pick(train), "test": pick(test)}
  channels = series.check_channels(parts["train"], what)
  series.check_channels(parts["test"], what)
  pre = opts.preprocessing
  if not isinstance(pre, series.SeriesPreprocessing):
    pre = series.fit_preprocessing(
      parts["train"].series, channels, length=opts.series_length, scaling=opts.series_scaling
    )
  x = {k: pre.transform(r.series, f"{what}: {k} split") for k, r in parts.items()}
  y, num_classes = {"train": None, "test": None}, None
  if parts["train"].labels is not None:
    both = np.concatenate([parts["train"].labels, parts["test"].labels])
    codes, classes = tables.encode_labels(both, f"{what}: labels")
    n = len(parts["train"].labels)
    y, num_classes = {"train": codes[:n], "test": codes[n:]}, len(classes)
  return Dataset(
    dataset, x["train"], y["train"], x["test"], y["test"], num_classes, preprocessing=pre
  )


def _text(dataset: str, path: str, opts: TableOptions) -> Dataset:
  """text:PATH: documents split by --test_fraction, tokenised as the training split says."""
  what = f"--dataset={dataset}"
  topts = opts.text or text.TextOptions()
  raw = text.read_source(path, what, text_column=topts.text_column, label_column=opts.label_column)
  train, test = tables.split_rows(len(raw.docs), opts.test_fraction, opts.seed, what)
  pre = opts.preprocessing
  if not isinstance(pre, text.TextPreprocessing):
    pre = text.fit_preprocessing(
      [raw.docs[i] for i in train],
      tokenizer=topts.tokenizer,
      vocab_size=topts.vocab_size,
      max_length=topts.max_length,
      what=what,
    )
  x = {
    k: pre.transform([raw.docs[i] for i in rows], f"{what}: {k} split")
    for k, rows in (("train", train), ("test", test))
  }
  y, num_classes = {"train": None, "test": None}, None
  if raw.labels is not None:
    codes, classes = tables.encode_labels(raw.labels, f"{what}: labels")
    y, num_classes = {"train": codes[train], "test": codes[test]}, len(classes)
  return Dataset(
    dataset, x["train"], y["train"], x["test"], y["test"], num_classes, preprocessing=pre
  )


def _on_disk(dataset: str, kind: str, path: str, opts: TableOptions) -> Dataset:
  """records:DIR or npy:PATH: rows read when indexed, split as their in-memory forms split."""
  what = f"--dataset={dataset}"
  if kind == "npy":
    x = records.NpyArray(path)
    if x.ndim == 4 and x.stored_dtype != np.uint8:
      raise UsageError(f"{what}: images [N, H, W, C] must be uint8 to be read by row")
    meta = records.Meta(
      kind="images" if x.ndim == 4 else "vectors",
      example_shape=x.example_shape,
      dtype=str(x.stored_dtype),
      splits={"all": {"num_examples": len(x)}},
      columns=None if x.ndim == 4 else [f"x{i}" for i in range(x.example_shape[0])],
    )
    splits = {"all": (x, None)}
  else:
    meta = records.Meta.load(path)
    splits = {name: records.open_split(path, meta, name) for name in meta.splits}
  if meta.kind == "images" and len(meta.example_shape) != 3:
    raise UsageError(f"{what}: images need [N, H, W, C] rows; they are {meta.example_shape}")
  digests = table = None
  if "all" in splits:
    x, y = splits["all"]
    if meta.kind == "images":
      train, test = held_out_rows(len(x), what)
    elif meta.source.startswith(("csv:", "parquet:")):  # a table: split by content, as read
      labels = None if y is None else np.asarray(meta.class_names, dtype=object)[y]
      digests = fingerprints.row_digests(meta.columns, np.asarray(x), labels)
      train, test = fingerprints.content_split(digests, opts.test_fraction, opts.seed, what)
      table = {
        "fingerprint": fingerprints.table_fingerprint(meta.columns, digests, meta.label_column),
        "rows": len(x),
        "columns": sorted(meta.columns),
      }
      digests = digests[train]
    else:
      train, test = tables.split_rows(len(x), opts.test_fraction, opts.seed, what)
    x_train, x_test = x.view(train), x.view(test)
    y_train, y_test = (None, None) if y is None else (y[train], y[test])
  else:
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
  pre = None
  if meta.kind == "series":  # fitted on the training split as series:PATH fits it
    pre = opts.preprocessing
    if not isinstance(pre, series.SeriesPreprocessing):
      pre = series.fit_preprocessing(
        series.unpadded(np.asarray(x_train)),
        meta.example_shape[1],
        length=opts.series_length,
        scaling=opts.series_scaling,
      )
    shape = (pre.length, pre.channels)
    read = functools.partial(series.transform_padded, pre, what)
    x_train = x_train.view(transform=read, example_shape=shape)
    x_test = x_test.view(transform=read, example_shape=shape)
  if meta.kind == "vectors":
    pre = opts.preprocessing or preprocessing.fit_preprocessing(
      meta.columns,
      np.asarray(x_train, np.float64),
      impute=opts.impute,
      scaling=opts.feature_scaling,
      label_column=meta.label_column,
      classes=meta.class_names,
      what=what,
      model_imputes=opts.model_imputes,
    )
    x_train = x_train.view(transform=functools.partial(pre.transform, what=what))
    x_test = x_test.view(transform=functools.partial(pre.transform, what=what))
  num_classes = meta.num_classes
  if y_train is not None and num_classes is None:
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
  return Dataset(
    dataset,
    x_train,
    y_train,
    x_test,
    y_test,
    num_classes,
    preprocessing=pre,
    row_digests=digests,
    fingerprint=table,
  )


def _load(
  dataset: str, data_dir: str | None, idx_dir: str | None, opts: TableOptions
) -> tuple[Dataset, str]:
  kind, arg = _parse(dataset)
  dataset = dataset.strip()
  if opts.label_column and kind not in (*tables.TABLE_FORMATS, "series", "text"):
    raise UsageError(
      f"--label_column names a column of a table (csv:, parquet:, json:, series:, text:); --dataset={dataset} "
      "is not one"
    )
  if kind == "digits":
    return local.load_digits(), "ships with scikit-learn; nothing to prepare"
  if kind == "npz":
    arrays = local.read_npz(dataset, arg)
    if np.asarray(arrays["x"]).ndim == 2:
      return _vectors(dataset, f"--dataset={dataset}", arrays, opts), f"read from {arg}"
    return local.load_npz(dataset, arg, arrays), f"read from {arg}"
  if kind in tables.TABLE_FORMATS:
    return _table(dataset, kind, arg, opts), f"read from {arg}"
  if kind == "series":
    return _series(dataset, arg, opts), f"read from {arg}"
  if kind == "text":
    return _text(dataset, arg, opts), f"read from {arg}"
  if kind == "folder":
    return local.load_folder(dataset, arg), f"decoded from the images in {arg}"
  if kind in ("records", "npy"):
    return _on_disk(dataset, kind, arg, opts), f"read by row from {arg}"
  if (
    idx_dir
    and tfds_offline.is_fashion_mnist(dataset)
    and not os.path.isdir(os.path.expanduser(idx_dir))
  ):
    raise UsageError(
      f"--idx_dir={idx_dir} does not exist; expected a directory with the four "
      f"Fashion-MNIST IDX files ({', '.join(tfds_offline.idx_file_names())})"
    )
  return tfds_offline.load(
    dataset,
    _data_dir(data_dir),
    os.path.expanduser(idx_dir) if idx_dir else DEFAULT_IDX_DIR,
    explicit_idx=bool(idx_dir),
  )


def load(
  dataset: str,
  *,
  data_dir: str | None = None,
  idx_dir: str | None = None,
  table_options: TableOptions | None = None,
) -> Dataset:
  """The whole dataset as arrays in host memory, preparing it first when it must and can.

  dataset: "digits", a tfds name ("fashion_mnist", "mnist", "NAME/CONFIG:VERSION"),
    "npz:PATH", "folder:DIR", "csv:PATH", "parquet:PATH" or "json:PATH".
  data_dir: where tfds datasets are prepared (default: `default_data_dir()`).
  idx_dir: the Fashion-MNIST IDX files (default DEFAULT_IDX_DIR), used to prepare
    fashion_mnist without TensorFlow.
  table_options: how tables and vectors are split and scaled (default: TableOptions()).
  """
  return _load(dataset, data_dir, idx_dir, table_options or TableOptions())[0]


def read_rows(
  dataset: str,
  *,
  columns: tuple[str, ...] | None = None,
  label_column: str | None = None,
  encoding: str | None = None,
) -> np.ndarray:
  """Every row of a --dataset form, unsplit and in its own units (for a trained run applied to
  new data): a table's features matched by name to `columns` (raw, float64, NaN for missing
  cells), npz x as stored, a folder's images as uint8."""
  kind, arg = _parse(dataset)
  what = f"--input={dataset.strip()}"
  if kind in tables.TABLE_FORMATS:
    names, x, _ = tables.read_table(
      arg, fmt=kind, label_column=label_column, what=what, encoding=encoding
    )
    return preprocessing.match_columns(names, x, columns, what) if columns else x
  if kind == "npz":
    x = local.read_npz(dataset, arg)["x"]
    if columns and np.asarray(x).ndim == 2 and x.shape[1] != len(columns):
      raise UsageError(f"{what}: x has {x.shape[1]} columns; the run was trained on {len(columns)}")
    return np.asarray(x)
  if kind == "folder":
    return local.read_folder(dataset, arg)[0]  # in sorted file order
  if kind in ("records", "npy"):  # read batch by batch when used
    if kind == "npy":
      x, names = records.NpyArray(arg), None
    else:
      x, meta = records.open_rows(arg)
      names = meta.columns
    if not columns or x.ndim != 2:
      return x
    if names is None:  # npy vectors: columns by position
      if x.example_shape[0] != len(columns):
        raise UsageError(
          f"{what}: rows have {x.example_shape[0]} columns; the run was trained on {len(columns)}"
        )
      return x
    missing = [c for c in columns if c not in names]
    if missing:
      raise UsageError(
        f"{what}: lacks the feature columns {preprocessing.listed(missing)} the run was trained on"
      )
    order = np.array([names.index(c) for c in columns])
    if np.array_equal(order, np.arange(len(names))):
      return x
    pick = functools.partial(np.take, indices=order, axis=1)
    return x.view(transform=pick, dtype=x.dtype, example_shape=(len(order),))
  raise UsageError(
    f"{what}: expected a table (csv:PATH, parquet:PATH, json:PATH), npz:PATH, folder:DIR, records:DIR or "
    "npy:PATH"
  )


def read_table_rows(
  dataset: str, schema: Any, *, label_column: str | None = None, encoding: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, int]]:
  """A table's rows as a run with a column `schema` encodes them (`tables.read_encoded`):
  (features [N, D] float64, the id column's cells or None, unseen categories per column)."""
  kind, arg = _parse(dataset)
  what = f"--input={dataset.strip()}"
  if kind not in tables.TABLE_FORMATS:
    raise UsageError(
      f"{what}: the run was trained on a table with text or boolean columns; expected csv:PATH, "
      "parquet:PATH or json:PATH"
    )
  return tables.read_encoded(
    arg, fmt=kind, what=what, schema=schema, label_column=label_column, encoding=encoding
  )


def read_table_input(dataset: str, *, encoding: str | None = None) -> Any:
  """A "csv:PATH" / "parquet:PATH" / "json:PATH" input as a pyarrow Table, every column as read
  (training's checks of the file: header, names, rows, encoding)."""
  kind, arg = _parse(dataset)
  what = f"--input={dataset.strip()}"
  if kind not in tables.TABLE_FORMATS:
    raise UsageError(f"{what}: expected a table: csv:PATH, parquet:PATH or json:PATH")
  names, cells, _ = tables.read_cells(
    arg, fmt=kind, label_column=None, what=what, encoding=encoding
  )
  return pa.table({n: cells[n] for n in names})


def describe(data: Dataset) -> str:
  labels = f"{data.num_classes} classes" if data.num_classes is not None else "unlabelled"
  if data.is_text:
    pre = data.preprocessing
    return (
      f"{len(data.x_train)} train and {len(data.x_test)} test {pre.describe()} "
      f"({text.truncated(data.x_train)} training documents truncated to {pre.length}), {labels}"
    )
  if data.is_series:
    return (
      f"{len(data.x_train)} train and {len(data.x_test)} test {data.preprocessing.describe()}, "
      f"{labels}"
    )
  if not data.is_image:
    pre = data.preprocessing
    scaling = pre.scaling if pre is not None else "none"
    missing = ""
    if pre is not None and pre.impute == "model":
      cells = sum(int(np.isnan(np.asarray(x)).sum()) for x in (data.x_train, data.x_test))
      missing = f"; {cells} missing cells left to the model (--impute=model)"
    return (
      f"{len(data.x_train)} train and {len(data.x_test)} test rows of {data.example_shape[0]} "
      f"features ({scaling} scaling{missing}), {labels}"
    )
  h, w, c = data.example_shape
  return (
    f"{len(data.x_train)} train and {len(data.x_test)} test images of {h}x{w}x{c} "
    f"{data.x_train.dtype}, {labels}"
  )


def prepare(dataset: str, *, data_dir: str | None = None, idx_dir: str | None = None) -> str:
  """Makes `dataset` readable offline (prepared, decoded and cached once); says where it is.

  Raises UsageError when it cannot, e.g. fashion_mnist with neither IDX files nor TensorFlow.
  """
  data, where = _load(dataset, data_dir, idx_dir, TableOptions())
  return f"{dataset.strip()}: {where}; {describe(data)}"
