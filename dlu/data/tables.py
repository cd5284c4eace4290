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

import collections
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from dlu import files
from dlu.data import fingerprints
from dlu.data.preprocessing import (
  Preprocessing,
  check_choices,
  first_line,
  fit_preprocessing,
  listed,
  match_columns,
  missing_message,
)
from dlu.errors import UsageError

TABLE_FORMATS = ("csv", "parquet", "json")
# Only these mean "missing" in a CSV cell (labels included): pyarrow's longer default list would
# also swallow values such as "n/a" or "#N/A" silently, which deserve an error naming the cell.
CSV_MISSING = ("", "NA", "NaN", "nan", "null")


def read_table(
  path: str, *, fmt: str, label_column: str | None, what: str
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
  """(feature names in file order, raw features float64 [N, D] with NaN for missing cells,
  raw labels [N] or None).

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
  reader = {"csv": _read_csv, "parquet": _read_parquet, "json": _read_json}[fmt]
  table = reader(path, where)
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
  features = [name for name in names if name != label_column]
  if not features:
    raise UsageError(
      f"{where}: no feature columns (the only column is the label {label_column!r}); expected "
      "numeric columns besides the label"
    )
  first_row = 2 if fmt == "csv" else 1
  columns = {name: table.column(name) for name in names}
  if fmt == "csv":
    # Dates and times would show reformatted in messages: read those columns again as text.
    odd = [
      f for f in features if not _is_numeric(columns[f].type) and not _is_text(columns[f].type)
    ]
    if odd:
      columns.update(_as_text(path, where, odd))
  x = np.empty((table.num_rows, len(features)), np.float64)
  for j, name in enumerate(features):
    x[:, j] = _feature_values(columns[name], f"{where}: column {name!r}", first_row)
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
    names = [_number_text(v) for v in values.tolist()]
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
) -> dict:
  """Reads a table, splits its rows by content and turns them into model inputs.

  Without `preprocessing` it is fitted on the training rows (with `impute` and `feature_scaling`;
  the classes are every label value of the file). With one, `impute` and `feature_scaling` are
  ignored: the file's feature columns must be exactly its columns (in any order) and it is
  applied unchanged, labels mapped by its classes.
  """
  where = _where(what, path)
  _check_fraction(test_fraction)
  if preprocessing is None:  # flag errors before reading a possibly large file
    check_choices(impute, feature_scaling)
  names, x_raw, raw_labels = read_table(path, fmt=fmt, label_column=label_column, what=what)
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
      row = f"row {i + (2 if fmt == 'csv' else 1)}"
      raise UsageError(missing_message(where, names[j], row))
  # Split by content: reordered or appended rows keep their split (dlu.data.fingerprints).
  digests = fingerprints.row_digests(names, x_raw, raw_labels)
  train, test = fingerprints.content_split(digests, test_fraction, seed, where)
  y = classes = None
  if raw_labels is not None:
    known = preprocessing.classes if preprocessing is not None else None
    y, classes = encode_labels(raw_labels, f"{where}: label column {label_column!r}", known)
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
    )
  return {
    "x_train": preprocessing._apply(x_train_raw, where),
    "y_train": None if y is None else y[train],
    "x_test": preprocessing._apply(x_raw[test], where),
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


def _shown(value) -> str:
  """A cell as it appears in a one-line message: quoted, escaped, cut short."""
  text = repr(value if isinstance(value, str) else str(value))
  return text if len(text) <= 40 else text[:36] + "...'"


def _is_numeric(t: pa.DataType) -> bool:
  return (
    pa.types.is_integer(t)
    or pa.types.is_floating(t)
    or pa.types.is_boolean(t)
    or pa.types.is_decimal(t)
    or pa.types.is_null(t)
  )


def _is_text(t: pa.DataType) -> bool:
  return pa.types.is_string(t) or pa.types.is_large_string(t)


def _read_csv(path: str, where: str, as_text: list[str] | None = None) -> pa.Table:
  convert = pcsv.ConvertOptions(
    null_values=list(CSV_MISSING),
    strings_can_be_null=True,
    quoted_strings_can_be_null=True,
    column_types={name: pa.string() for name in as_text or ()},
    include_columns=as_text or (),
  )
  try:
    return pcsv.read_csv(path, convert_options=convert)
  except (pa.ArrowException, OSError, ValueError) as e:
    raise UsageError(f"{where}: cannot read it as CSV: {first_line(e)}") from e


def _as_text(path: str, where: str, names: list[str]) -> dict[str, pa.ChunkedArray]:
  table = _read_csv(path, where, as_text=names)
  return {name: table.column(name) for name in names}


def _read_parquet(path: str, where: str) -> pa.Table:
  try:
    table = pq.read_table(path)
  except (pa.ArrowException, OSError, ValueError) as e:
    raise UsageError(f"{where}: cannot read it as Parquet: {first_line(e)}") from e
  # A pandas index stored as a column ("__index_level_0__") is not a feature.
  index = (table.schema.pandas_metadata or {}).get("index_columns", [])
  return table.drop_columns([c for c in index if isinstance(c, str) and c in table.column_names])


def _read_json(path: str, where: str) -> pa.Table:
  """JSON records: an array of objects (`[{"a": 1, ...}, ...]`) or JSON lines (one object a
  line), each object a row and its keys the columns (a key missing from a row: a missing cell).
  Rows count records from 1."""
  text = files.read_text(path, "a JSON table: an array of objects, or one object a line")
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


def _decoded(col: pa.ChunkedArray) -> pa.ChunkedArray:
  return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def _first(mask: pa.ChunkedArray | np.ndarray) -> int:
  return int(np.flatnonzero(np.asarray(mask))[0])


def _feature_values(col: pa.ChunkedArray, where: str, first_row: int) -> np.ndarray:
  """A feature column as float64 [N], NaN for missing cells; anything but numbers is an error."""
  col = _decoded(col)
  if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
    values = col.to_numpy()  # nulls become NaN; the caller's float64 array converts the rest
  else:
    if _is_numeric(col.type):  # bool, decimal, null
      numbers = col.cast(pa.float64())
    else:
      if not _is_text(col.type):
        try:
          col = col.cast(pa.string())
        except pa.ArrowException as e:
          raise UsageError(f"{where} holds {col.type} values, not numbers") from e
      numbers = _parse(col)
      if numbers is None:
        i = _first_unparsable(col)
        raise UsageError(
          f"{where} row {i + first_row} holds {_shown(col[i].as_py())}, not a number (use empty "
          "cells for missing values)"
        )
    values = pc.fill_null(numbers, math.nan).to_numpy()
  if values.dtype.kind == "f":
    infinite = np.isinf(values)
    if infinite.any():
      i = _first(infinite)
      raise UsageError(
        f"{where} row {i + first_row} holds {values[i]}, not a finite number (use empty cells "
        "for missing values)"
      )
  return values


def _parse(text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | None:
  """Text as float64 (nulls stay null), or None if some cell is not a number."""
  try:
    return pc.utf8_trim_whitespace(text).cast(pa.float64())
  except pa.ArrowInvalid:
    return None


def _first_unparsable(text: pa.ChunkedArray) -> int:
  """Index of the first cell that is not a number: bisection over prefixes with the cast that
  failed, so the search stays vectorised (and agrees with it) even for millions of rows."""
  good, bad = 0, len(text)  # text[:good] parses, text[:bad] does not
  while bad - good > 1:
    mid = (good + bad) // 2
    if _parse(text.slice(0, mid)) is None:
      bad = mid
    else:
      good = mid
  return good


def _label_values(col: pa.ChunkedArray, where: str, first_row: int) -> np.ndarray:
  """Labels as int64 (integers, bools, integral floats), float64 or str objects [N]."""
  col = _decoded(col)
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


def _number_text(v) -> str:
  return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
