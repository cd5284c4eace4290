"""A user's tables (CSV, Parquet) and plain vectors as model inputs, preprocessed with statistics
fitted on the training split only.

    data = load_table("/x.csv", fmt="csv", what="--dataset=csv:/x.csv", label_column="y",
                      test_fraction=0.1, seed=0, impute="mean", feature_scaling="standard")
    data["preprocessing"].save(os.path.join(workdir, "preprocessing.json"))

Evaluation and inference pass the saved Preprocessing back (`preprocessing=`), so a file is turned
into exactly the inputs the model was trained on: same columns (matched by name), same fill
values, same offsets and scales, same class indices.

From the package it imports dlu.data.preprocessing (Preprocessing and its fitting) and
dlu.data.fingerprints (rows split by content).
"""

from __future__ import annotations

import codecs
import collections
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from dlu.data import columns as columns_
from dlu.data import fingerprints
from dlu.data.preprocessing import (
  Preprocessing,
  check_choices,
  first_line,
  fit_preprocessing,
  listed,
  match_columns,
  missing_message,
  resolve_impute,
)
from dlu.errors import UsageError

TABLE_FORMATS = ("csv", "parquet", "json")
# Only these mean "missing" in a CSV cell (labels included): pyarrow's longer default list would
# also swallow values such as "n/a" or "#N/A" silently, which deserve an error naming the cell.
CSV_MISSING = ("", "NA", "NaN", "nan", "null")


def read_cells(
  path: str, *, fmt: str, label_column: str | None, what: str, encoding: str | None = None
) -> tuple[list[str], dict[str, pa.ChunkedArray], int]:
  """(column names in file order, each column's cells as read, the number of the first data
  row): the file's checks that every table passes (a header naming each column once, rows, the
  label column, a feature column besides it; UTF-8 text unless `encoding` names another).

  Rows in messages count records: in a CSV the header is row 1 (blank lines are skipped and not
  counted); a Parquet file has no header row, so its first row is row 1.
  """
  where = _where(what, path)
  if fmt not in TABLE_FORMATS:
    raise UsageError(f"{what}: unknown table format {fmt!r}; expected one of csv, parquet, json")
  if not os.path.isfile(path):
    raise UsageError(f"{where}: no such file; expected a {fmt} table with named columns")
  if os.path.getsize(path) == 0:
    raise UsageError(f"{where}: the file is empty; expected a header row, then data rows")
  if encoding:
    _check_encoding(encoding)
  reader = {"csv": _read_csv, "parquet": _read_parquet, "json": _read_json}[fmt]
  table = reader(path, where, encoding=encoding)
  names = table.column_names
  for j, name in enumerate(names):
    if not name:
      raise UsageError(
        f"{where}: column {j + 1} has no name in the header; name every column (an index "
        "written by pandas has none: write with index=False)"
      )
  duplicates = [name for name, count in collections.Counter(names).items() if count > 1]
  if duplicates:
    raise UsageError(f"{where}: duplicate column names {listed(duplicates)}; names must be unique")
  if table.num_rows == 0:
    raise UsageError(f"{where}: has no rows (only a header); expected data rows")
  if label_column is not None and label_column not in names:
    raise UsageError(
      f"{where}: --label_column={label_column} is not a column; the columns are "
      f"{listed(names)} ({len(names)} in all)"
    )
  if not [name for name in names if name != label_column]:
    raise UsageError(
      f"{where}: no feature columns (the only column is the label {label_column!r}); expected "
      "numeric columns besides the label"
    )
  cells = {name: table.column(name) for name in names}
  for name, col in cells.items():
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
      raise UsageError(
        f"{where}: column {name!r} holds text that is not {encoding or 'UTF-8'}; {_ENCODING_HINT}"
      )
  return names, cells, 2 if fmt == "csv" else 1


def read_table(
  path: str,
  *,
  fmt: str,
  label_column: str | None,
  what: str,
  encoding: str | None = None,
  hint_kinds: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
  """(feature names in file order, raw features float64 [N, D] with NaN for missing cells,
  raw labels [N] or None): a table of numbers only (`read_cells`' checks, then each cell a
  number, finite, or missing). `hint_kinds`: a cell that is not a number names the flag that
  reads its column as categories."""
  where = _where(what, path)
  names, columns, first_row = read_cells(
    path, fmt=fmt, label_column=label_column, what=what, encoding=encoding
  )
  features = [name for name in names if name != label_column]
  if fmt == "csv":
    # Dates and times would show reformatted in messages: read those columns again as text.
    odd = [
      f
      for f in features
      if not columns_.is_numeric(columns[f].type) and not columns_.is_text(columns[f].type)
    ]
    if odd:
      columns.update(_as_text(path, where, odd, encoding))
  x = np.empty((len(columns[names[0]]), len(features)), np.float64)
  for j, name in enumerate(features):
    try:
      x[:, j] = _feature_values(columns[name], f"{where}: column {name!r}", first_row)
    except UsageError as e:
      raise columns_.kind_hint(e, name) if hint_kinds else e from None
  labels = None
  if label_column is not None:
    labels = _label_values(
      columns[label_column], f"{where}: label column {label_column!r}", first_row
    )
  return features, x, labels


def encode_labels(
  raw: np.ndarray, what: str, classes: tuple[str, ...] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
  """Class indices int32 [N] and the classes (label values as str, in index order).

  Without `classes` they are the sorted distinct values: numbers sorted as numbers ("2" before
  "10"), then written as text (an integral float as an int: 3.0 -> "3").
  """
  raw = np.asarray(raw)
  if raw.ndim != 1:
    raise UsageError(f"{what}: labels have shape {raw.shape}, expected [N]")
  if raw.dtype.kind == "b":
    raw = raw.astype(np.int64)
  if raw.dtype.kind in "iuf":
    if raw.dtype.kind == "f":
      bad = np.flatnonzero(~np.isfinite(raw))
      if len(bad):
        raise UsageError(
          f"{what}: the label at index {bad[0]} is {raw[bad[0]]}; every example needs a label"
        )
    values, index = np.unique(raw, return_inverse=True)
    names = [columns_.number_text(v) for v in values.tolist()]
  elif raw.dtype.kind in "OUS":
    if raw.dtype.kind == "O":
      bad = [i for i, v in enumerate(raw) if v is None or (isinstance(v, float) and math.isnan(v))]
      if bad:
        raise UsageError(
          f"{what}: the label at index {bad[0]} is missing; every example needs a label"
        )
    text = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in raw], dtype=object)
    values, index = np.unique(text, return_inverse=True)
    names = [str(v) for v in values]
  else:
    raise UsageError(f"{what}: labels of dtype {raw.dtype}; expected integers or text")
  index = index.reshape(-1)
  if classes is None:
    return index.astype(np.int32), tuple(names)
  classes = tuple(str(c) for c in classes)
  position = {c: k for k, c in enumerate(classes)}
  unknown = [name for name in names if name not in position]
  if unknown:
    raise UsageError(
      f"{what}: labels {listed(unknown)} are not among the {len(classes)} classes the model "
      f"was trained with ({listed(classes)})"
    )
  mapping = np.array([position[name] for name in names], np.int32)
  return mapping[index], classes


def split_rows(n: int, test_fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """(train_rows, test_rows), both sorted: the last max(1, round(n * test_fraction)) rows of a
  seeded permutation are held out (at most n - 1, so training keeps a row)."""
  _check_fraction(test_fraction)
  if n < 2:
    raise UsageError(
      f"{what}: has {n} row{'' if n == 1 else 's'}; at least 2 are needed to hold some out for "
      "testing"
    )
  num_test = min(n - 1, max(1, round(n * test_fraction)))
  perm = np.random.default_rng(seed).permutation(n)
  return np.sort(perm[: n - num_test]), np.sort(perm[n - num_test :])


def load_table(
  path: str,
  *,
  fmt: str,
  what: str,
  label_column: str | None,
  test_fraction: float,
  seed: int,
  impute: str,
  feature_scaling: str,
  preprocessing: Preprocessing | None = None,
  overrides: columns_.Overrides | None = None,
  encoding: str | None = None,
  model_imputes: bool = False,
  embed_levels: int = 0,
  log=print,
) -> dict:
  """Reads a table, splits its rows by content and turns them into model inputs.

  Without `preprocessing` it is fitted on the training rows (with `impute` and `feature_scaling`;
  the classes are every label value of the file; the columns' kinds inferred, or named by
  `overrides`, and the columns dropped said with `log`). With one, `impute`, `feature_scaling`
  and `overrides` are ignored: the file's feature columns must be its columns (in any order) and
  it is applied unchanged, labels mapped by its classes. `impute="auto"` is "model" where the
  file has missing feature cells and `model_imputes`, else "none". `embed_levels`: a fitted
  categorical column of more levels is embedded by the model (columns.fit_schema; 0: none).
  """
  where = _where(what, path)
  _check_fraction(test_fraction)
  if preprocessing is None:  # flag errors before reading a possibly large file
    check_choices(impute, feature_scaling)
    if isinstance(embed_levels, bool) or not isinstance(embed_levels, int) or embed_levels < 0:
      raise UsageError(
        f"--embed_levels={embed_levels}: expected a whole number >= 0 (0: every category one-hot)"
      )
  names, cells, first_row = read_cells(
    path, fmt=fmt, label_column=label_column, what=what, encoding=encoding
  )
  features = [n for n in names if n != label_column]
  schema = kinds = dropped = None
  if preprocessing is not None:
    schema = preprocessing.schema
  else:
    overrides = overrides or columns_.Overrides()
    kinds, dropped = columns_.infer_kinds(features, cells, overrides, where, label_column)
    plain = all(k == "numeric" for k in kinds.values())
    if plain and not dropped and not overrides.drop and overrides.id_column is None:
      kinds = None  # numbers only: read as before, preprocessing.json unchanged
  if preprocessing is None and impute == "auto":
    kept = list(kinds) if kinds is not None else features
    has_missing = any(_has_missing(cells[n]) for n in kept)
    impute = resolve_impute(impute, has_missing, model_imputes)
  if schema is None and kinds is None:
    return _load_numbers(
      path,
      fmt,
      what,
      label_column,
      test_fraction,
      seed,
      impute,
      feature_scaling,
      preprocessing,
      encoding,
    )
  if dropped:
    log(
      f"{where}: dropped "
      + ", ".join(f"{n!r} ({why})" for n, why in dropped.items())
      + "; keep one with --categorical_columns or --numeric_columns"
    )
  if schema is not None:
    _check_schema_columns(features, schema, where, label_column)
    id_column = schema.id_column if schema.id_column in cells else None
  else:
    id_column = overrides.id_column
    feature_names = list(kinds)
  raw_labels = None
  if label_column is not None:
    raw_labels = _label_values(
      cells[label_column], f"{where}: label column {label_column!r}", first_row
    )
  # Split by content (dlu.data.fingerprints): by the id when there is one, else by every cell.
  if id_column is not None:
    ids = cells[id_column].to_pylist()
    digests = fingerprints.row_digests([id_column], np.array(ids, object)[:, None])
  else:
    kept = schema.names if schema is not None else feature_names
    block = np.array([columns_.category_text(cells[n]) for n in kept], object).T
    digests = fingerprints.row_digests(list(kept), block, raw_labels)
  train, test = fingerprints.content_split(digests, test_fraction, seed, where)
  inferred = schema is None  # kinds inferred (or overridden) here, not read from a run
  if schema is None:
    schema = columns_.fit_schema(
      kinds,
      {n: cells[n].take(pa.array(train)) for n in kinds},
      dropped=tuple(sorted({*dropped, *overrides.drop})),
      id_column=id_column,
      where=where,
      missing="mask" if impute == "model" else "level",
      embed_levels=embed_levels,
    )
  x_raw, _ = schema.encode(cells, where, first_row, hint_kinds=inferred)
  encoded = schema.encoded_names
  if (preprocessing.impute if preprocessing else impute) == "none":
    missing = np.isnan(x_raw)
    if missing.any():
      j = int(np.flatnonzero(missing.any(axis=0))[0])
      i = int(np.flatnonzero(missing[:, j])[0])
      raise UsageError(missing_message(where, encoded[j], f"row {i + first_row}"))
  y = classes = None
  if raw_labels is not None:
    known = preprocessing.classes if preprocessing is not None else None
    y, classes = encode_labels(raw_labels, f"{where}: label column {label_column!r}", known)
  rows = np.arange(len(x_raw)) + first_row
  if preprocessing is None:
    preprocessing = fit_preprocessing(
      encoded,
      x_raw[train],
      impute=impute,
      scaling=feature_scaling,
      label_column=label_column,
      classes=classes,
      what=where,
      schema=schema,
      rows=rows[train],
    )
  return {
    "x_train": preprocessing._apply(x_raw[train], where, rows[train]),
    "y_train": None if y is None else y[train],
    "x_test": preprocessing._apply(x_raw[test], where, rows[test]),
    "y_test": None if y is None else y[test],
    "num_classes": None if classes is None else len(classes),
    "preprocessing": preprocessing,
    "train_rows": train,
    "test_rows": test,
    "row_digests": digests[train],
    "fingerprint": {
      "fingerprint": fingerprints.table_fingerprint(list(schema.names), digests, label_column),
      "rows": len(x_raw),
      "columns": sorted(schema.names),
    },
  }


def read_encoded(
  path: str,
  *,
  fmt: str,
  what: str,
  schema: columns_.Schema,
  label_column: str | None = None,
  encoding: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, int]]:
  """New rows of a table as a run with `schema` encodes them: (features [N, D] float64, NaN
  for missing numbers and booleans; the id column's cells [N] object, or None when the file has
  none; {categorical column: cells of a level unseen in training}). The label column is
  optional; other columns than the schema's (and its dropped ones) are refused."""
  where = _where(what, path)
  names, cells, first_row = _read_cells_label_optional(path, fmt, what, label_column, encoding)
  features = [n for n in names if n != label_column]
  _check_schema_columns(features, schema, where, label_column)
  x, unknown = schema.encode(cells, where, first_row)
  ids = None
  if schema.id_column is not None and schema.id_column in cells:
    ids = np.array(cells[schema.id_column].to_pylist(), object)
  return x, ids, unknown


def _read_cells_label_optional(path, fmt, what, label_column, encoding):
  try:
    return read_cells(path, fmt=fmt, label_column=label_column, what=what, encoding=encoding)
  except UsageError as e:
    if label_column is None or "--label_column" not in str(e):
      raise
    return read_cells(path, fmt=fmt, label_column=None, what=what, encoding=encoding)


def _check_schema_columns(
  features: list[str], schema: columns_.Schema, where: str, label_column: str | None
) -> None:
  """A table read by a stored schema holds its feature columns, perhaps its dropped ones, its
  id and its label, and nothing else."""
  missing = [c for c in schema.names if c not in features]
  extra = [c for c in features if c not in schema.names and c not in schema.ignored(label_column)]
  if missing or extra:
    problems = []
    if missing:
      problems.append(f"lacks the feature columns {listed(missing)}")
    if extra:
      problems.append(f"has columns the model was not trained on: {listed(extra)}")
    raise UsageError(
      f"{where}: {' and '.join(problems)}; expected the {len(schema.names)} feature columns the "
      "model was trained on"
    )


def _load_numbers(
  path,
  fmt,
  what,
  label_column,
  test_fraction,
  seed,
  impute,
  feature_scaling,
  preprocessing,
  encoding,
) -> dict:
  """load_table of a table of numbers only (no column kinds stored)."""
  where = _where(what, path)
  names, x_raw, raw_labels = read_table(
    path,
    fmt=fmt,
    label_column=label_column,
    what=what,
    encoding=encoding,
    hint_kinds=preprocessing is None,
  )
  first_row = 2 if fmt == "csv" else 1
  if preprocessing is not None:
    x_raw = match_columns(
      names, x_raw, preprocessing.columns, where, label_column=preprocessing.label_column
    )
    names = list(preprocessing.columns)
  if (preprocessing.impute if preprocessing else impute) == "none":
    # Checked on the whole file, before the split, so the row is the file's.
    missing = np.isnan(x_raw)
    if missing.any():
      j = int(np.flatnonzero(missing.any(axis=0))[0])
      i = int(np.flatnonzero(missing[:, j])[0])
      raise UsageError(missing_message(where, names[j], f"row {i + first_row}"))
  # Split by content: reordered or appended rows keep their split (dlu.data.fingerprints).
  digests = fingerprints.row_digests(names, x_raw, raw_labels)
  train, test = fingerprints.content_split(digests, test_fraction, seed, where)
  y = classes = None
  if raw_labels is not None:
    known = preprocessing.classes if preprocessing is not None else None
    y, classes = encode_labels(raw_labels, f"{where}: label column {label_column!r}", known)
  rows = np.arange(len(x_raw)) + first_row
  x_train_raw = x_raw[train]
  if preprocessing is None:
    preprocessing = fit_preprocessing(
      names,
      x_train_raw,
      impute=impute,
      scaling=feature_scaling,
      label_column=label_column,
      classes=classes,
      what=where,
      rows=rows[train],
    )
  return {
    "x_train": preprocessing._apply(x_train_raw, where, rows[train]),
    "y_train": None if y is None else y[train],
    "x_test": preprocessing._apply(x_raw[test], where, rows[test]),
    "y_test": None if y is None else y[test],
    "num_classes": None if classes is None else len(classes),
    "preprocessing": preprocessing,
    "train_rows": train,
    "test_rows": test,
    "row_digests": digests[train],
    "fingerprint": {
      "fingerprint": fingerprints.table_fingerprint(names, digests, label_column),
      "rows": len(x_raw),
      "columns": sorted(names),
    },
  }


def vectors_from_arrays(x: np.ndarray, what: str) -> tuple[list[str], np.ndarray]:
  """Column names f0..f{D-1} and x [N, D] as float64 (NaN = missing; bool -> 0/1)."""
  x = np.asarray(x)
  if x.dtype.kind not in "biuf":
    raise UsageError(f"{what}: x has dtype {x.dtype}; expected numbers (int, float or bool)")
  if x.ndim != 2 or x.shape[1] == 0:
    raise UsageError(f"{what}: x has shape {x.shape}; expected vectors [N, D] with D >= 1")
  x = x.astype(np.float64)
  infinite = np.isinf(x)
  if infinite.any():
    i, j = (int(k) for k in np.argwhere(infinite)[0])
    raise UsageError(
      f"{what}: x[{i}, {j}] is {x[i, j]}; expected finite numbers (NaN for missing values)"
    )
  return [f"f{j}" for j in range(x.shape[1])], x


# --- helpers ---


def _where(what: str, path: str) -> str:
  """`what` names the file already when it is the flag's value (--dataset=csv:/x.csv)."""
  return what if what.endswith(path) else f"{what} ({path})"


def _check_fraction(test_fraction: float) -> None:
  try:
    fraction = float(test_fraction)
  except (TypeError, ValueError):
    fraction = math.nan
  if not 0 < fraction < 1:
    raise UsageError(
      f"--test_fraction={test_fraction}: expected a number strictly between 0 and 1 (the share "
      "of rows held out for testing)"
    )


_ENCODING_HINT = (
  "save it as UTF-8 (with or without a byte-order mark), or pass --encoding=NAME (e.g. "
  "--encoding=latin-1 or --encoding=utf-16) to read it as it is"
)


def _check_encoding(encoding: str) -> None:
  try:
    codecs.lookup(encoding)
  except LookupError as e:
    raise UsageError(
      f"--encoding={encoding}: not a text encoding Python knows (e.g. utf-8, latin-1, cp1252, "
      "utf-16)"
    ) from e


def _sniff_utf8(path: str, where: str) -> None:
  """A UTF-16 byte-order mark or NUL bytes at the start: not UTF-8 text (pyarrow would report
  a parse error quoting a raw NUL)."""
  with open(path, "rb") as f:
    head = f.read(4096)
  if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head:
    kind = "UTF-16" if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "binary"
    raise UsageError(f"{where}: is not UTF-8 text (it looks {kind}); {_ENCODING_HINT}")


def _read_csv(
  path: str, where: str, as_text: list[str] | None = None, encoding: str | None = None
) -> pa.Table:
  if not encoding:
    _sniff_utf8(path, where)
  convert = pcsv.ConvertOptions(
    null_values=list(CSV_MISSING),
    strings_can_be_null=True,
    quoted_strings_can_be_null=True,
    column_types={name: pa.string() for name in as_text or ()},
    include_columns=as_text or (),
  )
  read = pcsv.ReadOptions(encoding=encoding or "utf8")
  try:
    table = pcsv.read_csv(path, read_options=read, convert_options=convert)
    table.column_names  # noqa: B018  (the header is decoded here)
    return table
  except UnicodeDecodeError as e:
    raise UsageError(
      f"{where}: is not {encoding or 'UTF-8'} text (byte {e.object[e.start : e.start + 1]!r} in "
      f"the header); {_ENCODING_HINT}"
    ) from e
  except (pa.ArrowException, OSError, ValueError) as e:
    raise UsageError(f"{where}: cannot read it as CSV: {first_line(e)}") from e


def _as_text(
  path: str, where: str, names: list[str], encoding: str | None = None
) -> dict[str, pa.ChunkedArray]:
  table = _read_csv(path, where, as_text=names, encoding=encoding)
  return {name: table.column(name) for name in names}


def _read_parquet(path: str, where: str, encoding: str | None = None) -> pa.Table:
  """Parquet stores its text as UTF-8: `encoding` does not apply."""
  del encoding
  try:
    table = pq.read_table(path)
  except (pa.ArrowException, OSError, ValueError) as e:
    raise UsageError(f"{where}: cannot read it as Parquet: {first_line(e)}") from e
  # A pandas index stored as a column ("__index_level_0__") is not a feature.
  index = (table.schema.pandas_metadata or {}).get("index_columns", [])
  return table.drop_columns([c for c in index if isinstance(c, str) and c in table.column_names])


def _read_json(path: str, where: str, encoding: str | None = None) -> pa.Table:
  """JSON records: an array of objects (`[{"a": 1, ...}, ...]`) or JSON lines (one object a
  line), each object a row and its keys the columns (a key missing from a row: a missing cell).
  Rows count records from 1."""
  if encoding:
    try:
      with open(path, encoding=encoding) as f:
        text = f.read()
    except (OSError, UnicodeDecodeError) as e:
      raise UsageError(f"{where}: cannot read it as {encoding} text ({first_line(e)})") from e
  else:
    try:
      with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    except OSError as e:
      raise UsageError(f"cannot read {where}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
      raise UsageError(f"{where}: is not UTF-8 text (byte {e.start}); {_ENCODING_HINT}") from e
  text = text.removeprefix("\ufeff")  # a byte-order mark, as some editors write
  stripped = text.lstrip()
  try:
    if stripped.startswith("["):
      rows = json.loads(text)
    else:
      rows = [json.loads(line) for line in text.splitlines() if line.strip()]
  except json.JSONDecodeError as e:
    line = e.lineno if stripped.startswith("[") else _json_line(text, e)
    raise UsageError(f"{where}: line {line} is not valid JSON ({e.msg})") from e
  for i, row in enumerate(rows):
    if not isinstance(row, dict):
      raise UsageError(
        f"{where}: record {i + 1} is a {type(row).__name__}, not an object; expected an array "
        'of objects ([{"a": 1, "b": 2}, ...]) or one object a line'
      )
    for key, value in row.items():
      if isinstance(value, (dict, list)):
        raise UsageError(
          f"{where}: record {i + 1} holds a nested {type(value).__name__} in {key!r}; "
          "expected numbers, strings, booleans or null in every column"
        )
  names = list(dict.fromkeys(key for row in rows for key in row))
  if not names:
    raise UsageError(f"{where}: holds no columns; expected objects with named fields")
  kinds = {}  # column -> (kind, first record) of its first non-null value
  for i, row in enumerate(rows):
    for key, value in row.items():
      if value is None:
        continue
      kind = (
        "text" if isinstance(value, str) else "boolean" if isinstance(value, bool) else "number"
      )
      first = kinds.setdefault(key, (kind, i + 1))
      if first[0] != kind:
        raise UsageError(
          f"{where}: column {key!r} holds a {first[0]} in record {first[1]} and a {kind} in "
          f"record {i + 1} ({value!r}); expected one kind of value a column"
        )
  try:
    return pa.Table.from_pylist(rows).select(names)
  except (pa.ArrowException, ValueError, TypeError) as e:
    raise UsageError(f"{where}: cannot read it as a table: {first_line(e)}") from e


def _json_line(text: str, error: json.JSONDecodeError) -> int:
  """The file line of a JSON-lines record that failed to parse."""
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      json.loads(line)
    except json.JSONDecodeError:
      return number
  return error.lineno


def _label_values(col: pa.ChunkedArray, where: str, first_row: int) -> np.ndarray:
  """Labels as int64 (integers, bools, integral floats), float64 or str objects [N]."""
  col = columns_._decoded(col)
  if col.null_count:
    i = _first(col.is_null().to_numpy())
    raise UsageError(f"{where} has no value at row {i + first_row}; every row needs a label")
  t = col.type
  if pa.types.is_integer(t) or pa.types.is_boolean(t):
    return col.cast(pa.int64()).to_numpy()
  if pa.types.is_floating(t) or pa.types.is_decimal(t):
    values = col.cast(pa.float64()).to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
      i = _first(bad)
      raise UsageError(f"{where} holds {values[i]} at row {i + first_row}; expected a label")
    integral = values == np.round(values)
    return values.astype(np.int64) if integral.all() and np.abs(values).max() < 2**53 else values
  try:
    return col.cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)
  except pa.ArrowException as e:
    raise UsageError(f"{where} holds {t} values; expected numbers or text") from e


def _feature_values(col: pa.ChunkedArray, where: str, first_row: int) -> np.ndarray:
  """A feature column as float64 [N], NaN for missing cells; anything but numbers is an error."""
  return columns_.numbers(col, where, first_row)


def _has_missing(col: pa.ChunkedArray) -> bool:
  """A null cell (an empty CSV cell, NA, ...) or a NaN number."""
  col = col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
  if col.null_count:
    return True
  if pa.types.is_floating(col.type):
    return bool(pc.any(pc.is_nan(col)).as_py())
  return False


def _first(mask) -> int:
  return int(np.flatnonzero(np.asarray(mask))[0])
