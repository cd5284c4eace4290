"""A table's cells by kind: numbers, booleans and categories, inferred from the cells (or named
by flags) and encoded as numbers, with the fitted state kept as plain JSON.

    kinds, dropped = infer_kinds(names, cells, Overrides(id_column="id"), where)
    schema = fit_schema(kinds, {n: c.take(train_rows) for n, c in cells.items()}, dropped)
    x, unknown = schema.encode(cells, where, first_row=2)   # [N, D] float64, NaN = missing

A numeric column is read as numbers; a boolean one (true/false, yes/no, y/n, t/f, 1/0 as text,
or a Boolean column) as 0/1; a categorical one (any other text) one-hot encoded by
scikit-learn's OneHotEncoder over the levels of the training split. A missing categorical cell
is a level of its own (`MISSING`, kept when the training split has one); a level first seen
after training (or a missing cell where training had none) is encoded as all zeros and counted
in `unknown`. Under --impute=model (`Schema.missing == "mask"`) a missing categorical cell is
missing instead, NaN in each of its encoded columns, as is an unseen level (still counted).
A categorical column of more levels than `embed_levels` (--embed_levels) is embedded
instead: its encoded columns stay one-hot here (so losses, reconstructions and fills read it as
any category), and the model looks its level id up in a learned embedding of `embed_dim`
numbers (`embedding_dim`; dlu.models.layers.TableEmbedding).
Date-like columns and text columns whose values are nearly all distinct (names,
comments) are dropped, and said so. `--categorical_columns`, `--numeric_columns`,
`--drop_columns` and `--id_column` (never a feature) override the inference.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlu.errors import UsageError

KINDS = ("numeric", "boolean", "categorical")
#: How a missing categorical cell is encoded: a level of its own, or missing (masked).
MISSING_MODES = ("level", "mask")
TRUE_WORDS = ("true", "yes", "y", "t", "1")
FALSE_WORDS = ("false", "no", "n", "f", "0")
#: The name of the missing level in an encoded column's name (its value is None, JSON null).
MISSING = "(missing)"
#: A text column with more distinct values than this, nearly all distinct, is free text.
FREE_TEXT_MIN_DISTINCT = 20
FREE_TEXT_DISTINCT_SHARE = 0.9
_MAX_LISTED = 10
#: --embed_levels' default: a category of more levels than this is embedded, not one-hot.
EMBED_LEVELS = 16
#: The widest embedding `embedding_dim` gives.
MAX_EMBED_DIM = 16


def embedding_dim(levels: int) -> int:
  """The embedding width of a category of `levels` levels: min(16, ceil(1.6 * levels**0.56)),
  fastai's rule of thumb capped at 16 numbers (40 levels: 13; 100: 21 -> 16)."""
  return min(MAX_EMBED_DIM, math.ceil(1.6 * levels**0.56))


@dataclasses.dataclass(frozen=True)
class Overrides:
  """The column flags: kinds named by the user, columns dropped, the id column."""

  categorical: tuple[str, ...] = ()
  numeric: tuple[str, ...] = ()
  drop: tuple[str, ...] = ()
  id_column: str | None = None

  @classmethod
  def from_flags(cls, categorical=(), numeric=(), drop=(), id_column=None) -> Overrides:
    clean = lambda names: tuple(n.strip() for n in (names or ()) if n.strip())  # noqa: E731
    return cls(clean(categorical), clean(numeric), clean(drop), (id_column or "").strip() or None)


@dataclasses.dataclass(frozen=True)
class Column:
  """One feature column: its kind and, for a categorical one, its training levels."""

  name: str
  kind: str
  categories: tuple[str | None, ...] = ()  # categorical: levels in code order (None: missing)
  embed_dim: int = 0  # categorical: the model embeds its level id in this many numbers (0: one-hot)

  @property
  def encoded_names(self) -> tuple[str, ...]:
    if self.kind != "categorical":
      return (self.name,)
    return tuple(f"{self.name}={MISSING if c is None else c}" for c in self.categories)


@dataclasses.dataclass(frozen=True)
class Schema:
  """How a table's cells become numbers: its feature columns (model order), the columns it
  ignores (dropped at training) and its id column."""

  columns: tuple[Column, ...]
  dropped: tuple[str, ...] = ()
  id_column: str | None = None
  # "level": a missing categorical cell is a level of its own; "mask" (--impute=model): it is
  # missing (NaN in each of the column's encoded columns), as is a level unseen in training.
  missing: str = "level"

  @property
  def names(self) -> tuple[str, ...]:
    """The feature columns a table must hold."""
    return tuple(c.name for c in self.columns)

  @property
  def encoded_names(self) -> tuple[str, ...]:
    """The model's input columns: one per number or boolean, one per level of a category."""
    return tuple(n for c in self.columns for n in c.encoded_names)

  @property
  def scaled(self) -> np.ndarray:
    """[D] bool: which encoded columns are numbers (booleans and one-hot codes stay 0/1)."""
    return np.array([c.kind == "numeric" for c in self.columns for _ in c.encoded_names], bool)

  def kinds(self) -> tuple[tuple[str, int, int], ...]:
    """(kind, start, stop) of each feature column's encoded columns (dlu.ops.tabular)."""
    return tuple((c.kind, s.start, s.stop) for c, s in self.groups())

  def embedded(self) -> tuple[tuple[int, int, int], ...]:
    """(start, stop, embed_dim) of each embedded category's encoded columns (the model looks its
    level up in an embedding; DataSpec.embedded)."""
    return tuple((s.start, s.stop, c.embed_dim) for c, s in self.groups() if c.embed_dim)

  def groups(self) -> list[tuple[Column, slice]]:
    """Each feature column and its encoded columns' slice."""
    out, start = [], 0
    for c in self.columns:
      out.append((c, slice(start, start + len(c.encoded_names))))
      start += len(c.encoded_names)
    return out

  def ignored(self, label_column: str | None = None) -> set[str]:
    """Columns a table may hold besides the features: dropped ones, the id and the label."""
    return {*self.dropped, *(n for n in (self.id_column, label_column) if n)}

  def encode(
    self,
    cells: dict[str, pa.ChunkedArray],
    where: str,
    first_row: int = 1,
    hint_kinds: bool = False,
  ) -> tuple[np.ndarray, dict[str, int]]:
    """The features as numbers [N, D] float64 (NaN: a missing number or boolean) and, per
    categorical column, how many cells held a level the training split did not have.
    `hint_kinds`: a cell that is not a number in a numeric column names the flag that reads
    the column as categories (where the kinds were inferred, not a run's)."""
    from sklearn.preprocessing import OneHotEncoder  # noqa: PLC0415  (tables only)

    n = len(next(iter(cells.values()))) if cells else 0
    blocks, unknown = [], {}
    for column in self.columns:
      col, what = cells[column.name], f"{where}: column {column.name!r}"
      if column.kind == "numeric":
        try:
          blocks.append(numbers(col, what, first_row)[:, None])
        except UsageError as e:
          raise kind_hint(e, column.name) if hint_kinds else e from None
      elif column.kind == "boolean":
        blocks.append(booleans(col, what, first_row)[:, None])
      else:
        text = category_text(col)[:, None]
        known = list(column.categories)
        encoder = OneHotEncoder(
          categories=[known], handle_unknown="ignore", sparse_output=False, dtype=np.float64
        ).fit(np.array(known[:1], dtype=object)[:, None])
        codes = encoder.transform(text)
        unseen = codes.sum(axis=1) == 0
        if self.missing == "mask":
          absent = np.array([v is None for v in text[:, 0]], bool)
          unseen &= ~absent
          codes[unseen | absent] = np.nan
        count = int(unseen.sum())
        if count:
          unknown[column.name] = count
        blocks.append(codes)
    return (np.concatenate(blocks, axis=1) if blocks else np.empty((n, 0))), unknown

  def decode(self, x: np.ndarray, *, levels_only: bool = False) -> dict[str, np.ndarray]:
    """Encoded rows [N, D] (as the model reconstructs or samples them, in raw units) back to
    each feature column's values: numbers, booleans (> 0.5), the most likely category
    (`levels_only`: the most likely real level, never the missing one)."""
    x = np.array(x, np.float64)
    if levels_only:
      for column, cols in self.groups():
        if None in column.categories:
          x[:, cols.start + column.categories.index(None)] = -np.inf
    out = {}
    for column, cols in self.groups():
      block = x[:, cols]
      if column.kind == "numeric":
        out[column.name] = block[:, 0]
      elif column.kind == "boolean":
        out[column.name] = block[:, 0] > 0.5
      else:
        levels = np.array([MISSING if c is None else c for c in column.categories], object)
        out[column.name] = levels[block.argmax(axis=1)]
    return out

  def to_dict(self) -> dict:
    return {
      "columns": [
        {
          "name": c.name,
          "kind": c.kind,
          **({"categories": list(c.categories)} if c.kind == "categorical" else {}),
          **({"embed_dim": c.embed_dim} if c.embed_dim else {}),
        }
        for c in self.columns
      ],
      "dropped": list(self.dropped),
      "id_column": self.id_column,
      **({"missing": self.missing} if self.missing != "level" else {}),
    }

  @classmethod
  def from_dict(cls, fields: dict) -> Schema:
    """The inverse of to_dict; TypeError or ValueError on a malformed one."""
    if not isinstance(fields, dict) or not isinstance(fields.get("columns"), list):
      raise TypeError("schema: expected an object with a list of columns")
    columns = []
    for c in fields["columns"]:
      if (
        not isinstance(c, dict) or not isinstance(c.get("name"), str) or c.get("kind") not in KINDS
      ):
        raise ValueError(f"schema: column {c!r}: expected a name and a kind of {', '.join(KINDS)}")
      levels = c.get("categories", [])
      if not isinstance(levels, list) or not all(v is None or isinstance(v, str) for v in levels):
        raise TypeError(f"schema: column {c['name']!r}: categories must be strings or null")
      if c["kind"] == "categorical" and not levels:
        raise ValueError(f"schema: column {c['name']!r}: a categorical column needs categories")
      embed_dim = c.get("embed_dim", 0)  # absent in files written before embeddings: one-hot
      if (
        not isinstance(embed_dim, int)
        or isinstance(embed_dim, bool)
        or embed_dim < 0
        or (embed_dim and c["kind"] != "categorical")
      ):
        raise ValueError(
          f"schema: column {c['name']!r}: embed_dim {embed_dim!r}: expected a whole number >= 0, "
          "and 0 unless the column is categorical"
        )
      columns.append(Column(c["name"], c["kind"], tuple(levels), embed_dim))
    dropped, id_column = fields.get("dropped", []), fields.get("id_column")
    if not isinstance(dropped, list) or not (id_column is None or isinstance(id_column, str)):
      raise TypeError("schema: dropped must be a list and id_column a string or null")
    missing = fields.get("missing", "level")
    if missing not in MISSING_MODES:
      raise ValueError(f"schema: missing {missing!r}: expected one of {', '.join(MISSING_MODES)}")
    return cls(tuple(columns), tuple(dropped), id_column, missing)


# --- Inference.


def infer_kinds(
  names: list[str],
  cells: dict[str, pa.ChunkedArray],
  overrides: Overrides,
  where: str,
  label_column: str | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
  """({feature column: kind} in file order, {dropped column: why}). A column named by a flag
  must exist, be named once, and not be the label."""
  named = {
    "--categorical_columns": overrides.categorical,
    "--numeric_columns": overrides.numeric,
    "--drop_columns": overrides.drop,
    "--id_column": (overrides.id_column,) if overrides.id_column else (),
  }
  seen: dict[str, str] = {}
  for flag, columns in named.items():
    for name in columns:
      if name not in names and name != label_column:
        raise UsageError(
          f"{where}: {flag} names {name!r}, which is not a column; the columns are "
          f"{listed(names)} ({len(names)} in all)"
        )
      if name == label_column:
        raise UsageError(
          f"{where}: {flag} names {name!r}, the --label_column; the label is never a feature"
        )
      if name in seen:
        raise UsageError(f"{where}: {name!r} is named by both {seen[name]} and {flag}; pick one")
      seen[name] = flag
  kinds, dropped = {}, {}
  for name in names:
    flag = seen.get(name)
    if flag in ("--drop_columns", "--id_column"):
      continue
    col = _decoded(cells[name])
    if flag == "--categorical_columns":
      kinds[name] = "categorical"
    elif flag == "--numeric_columns":
      kinds[name] = "numeric"
    elif is_numeric(col.type) and not pa.types.is_boolean(col.type):
      kinds[name] = "numeric"
    elif pa.types.is_boolean(col.type):
      kinds[name] = "boolean"
    elif not is_text(col.type):
      temporal = pa.types.is_temporal(col.type)
      dropped[name] = "dates" if temporal else f"{col.type} values"
    else:
      kinds[name], why = _text_kind(col)
      if why:
        dropped[name] = why
        del kinds[name]
  return kinds, dropped


def kind_hint(error: UsageError, name: str) -> UsageError:
  """`error` for a cell of column `name` that is not a number, naming the flag that reads the
  column as categories instead (where its kind was inferred)."""
  if "not a number" not in str(error):
    return error
  return UsageError(f"{error}, or --categorical_columns={name} to read the column as categories")


def _text_kind(col: pa.ChunkedArray) -> tuple[str, str | None]:
  """A text column's kind (numbers with some typos stay numeric, so the typo is named), or why
  it is dropped."""
  text = pc.utf8_trim_whitespace(col)
  distinct = pc.unique(text.drop_null())
  if not len(distinct):
    return "numeric", None  # every cell missing: refused as a number column is
  lower = set(pc.utf8_lower(distinct).to_pylist())
  if lower <= set(TRUE_WORDS + FALSE_WORDS):
    return "boolean", None
  parsed = _parsed_share(distinct)
  if parsed > 0.5:
    return "numeric", None
  if _date_like(distinct):
    return "categorical", "dates"
  if _time_like(distinct):
    return "categorical", "times of day"
  observed = len(text) - text.null_count
  if (
    len(distinct) > FREE_TEXT_MIN_DISTINCT and len(distinct) >= FREE_TEXT_DISTINCT_SHARE * observed
  ):
    return "categorical", f"free text: {len(distinct)} distinct values in {observed} cells"
  return "categorical", None


def _parsed_share(distinct: pa.Array) -> float:
  """The share of (up to 1,000) distinct values that read as numbers."""
  parsed = [_is_number(v) for v in distinct.slice(0, 1000).to_pylist()]
  return sum(parsed) / len(parsed)


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _date_like(distinct: pa.Array) -> bool:
  """Most values parse as ISO dates or timestamps."""
  sample = distinct.slice(0, 200)
  ok = 0
  for v in sample.to_pylist():
    try:
      pa.scalar(v).cast(pa.timestamp("s"))
      ok += 1
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      pass
  return ok > 0.5 * len(sample)


_TIME_OF_DAY = re.compile(r"^\s*\d{1,2}:\d{2}(:\d{2})?\s*([ap]\.?m\.?)?\s*$", re.I)


def _time_like(distinct: pa.Array) -> bool:
  """Most values are clock times (13:30, 9:05:00, 1:30 pm)."""
  sample = [v for v in distinct.slice(0, 200).to_pylist() if v.strip()]
  return bool(sample) and sum(bool(_TIME_OF_DAY.match(v)) for v in sample) > 0.5 * len(sample)


def fit_schema(
  kinds: dict[str, str],
  train_cells: dict[str, pa.ChunkedArray],
  dropped=(),
  id_column: str | None = None,
  where: str = "--dataset",
  missing: str = "level",
  embed_levels: int = 0,
) -> Schema:
  """The categories of each categorical column from the training rows (OneHotEncoder's
  categories_: sorted, the missing level last; none with `missing="mask"`); a column of more
  than `embed_levels` levels (0: none) embedded in `embedding_dim(levels)` numbers."""
  from sklearn.preprocessing import OneHotEncoder  # noqa: PLC0415  (fitting only)

  columns = []
  for name, kind in kinds.items():
    levels: tuple = ()
    if kind == "categorical":
      text = category_text(train_cells[name])[:, None]
      if not len(text):
        raise UsageError(f"{where}: column {name!r} has no cells on the training split")
      fitted = OneHotEncoder(handle_unknown="ignore").fit(text).categories_[0]
      levels = tuple(None if v is None else str(v) for v in fitted.tolist())
      if missing == "mask":
        levels = tuple(v for v in levels if v is not None)
        if not levels:
          raise UsageError(f"{where}: column {name!r} has no cells on the training split")
    embed_dim = embedding_dim(len(levels)) if 0 < embed_levels < len(levels) else 0
    columns.append(Column(name, kind, levels, embed_dim))
  schema = Schema(tuple(columns), tuple(dropped), id_column, missing)
  counts = collections.Counter(schema.encoded_names)
  clash = sorted(n for n, k in counts.items() if k > 1)
  if clash:
    raise UsageError(
      f"{where}: two encoded columns would both be named {clash[0]!r} (a column and a level of a "
      "categorical column, or a level spelled as the missing one); rename one"
    )
  return schema


# --- Filling cells.


def missing_cells(col: pa.ChunkedArray) -> np.ndarray:
  """[N] bool: the cells that are missing (null, or a NaN number)."""
  col = _decoded(col)
  missing = col.is_null().to_numpy(zero_copy_only=False)
  if pa.types.is_floating(col.type):
    missing |= pc.fill_null(pc.is_nan(col), False).to_numpy(zero_copy_only=False)
  return missing


def filled(col: pa.ChunkedArray, kind: str, values: np.ndarray) -> pa.Array:
  """A column with its missing cells (`missing_cells`) replaced by `values` [N] (numbers,
  bools or level names; only the missing rows' are used), in the column's own type where it
  can hold them: numbers as float64 (integers stay integers when every fill is whole), booleans
  as the column's own words (yes/no, ...), bools or 0/1, levels as the column's type (text, or
  numbers for numeric codes)."""
  col = _decoded(col).combine_chunks()
  missing = missing_cells(col)
  values = np.asarray(values)
  base = col
  if kind == "numeric" or (kind == "boolean" and not is_text(col.type)):
    if kind == "boolean":
      values = (values > 0.5) if values.dtype.kind == "f" else values.astype(bool)
    if pa.types.is_boolean(col.type):
      fill = pa.array(values.astype(bool))
    elif pa.types.is_integer(col.type) and np.all(np.round(values[missing]) == values[missing]):
      fill = pa.array(np.round(values).astype(np.int64)).cast(col.type)
    else:
      fill, base = pa.array(values.astype(np.float64)), col.cast(pa.float64())
  elif kind == "boolean":
    true_word, false_word = _words(col)
    truth = (values > 0.5) if values.dtype.kind == "f" else values.astype(bool)
    fill = pa.array(np.where(truth, true_word, false_word).tolist(), col.type)
  else:
    text = [None if v is None else str(v) for v in values.tolist()]
    try:
      fill = pa.array(text, col.type) if is_text(col.type) else pa.array(text).cast(col.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      fill, base = pa.array(text), col.cast(pa.string())
  return pc.if_else(pa.array(missing), fill, base)


def _words(col: pa.ChunkedArray) -> tuple[str, str]:
  """The words a text boolean column writes for true and false (its most common ones)."""
  words = pc.utf8_trim_whitespace(col.cast(pa.string())).drop_null().to_pylist()
  counts = collections.Counter(words)
  true = [w for w, _ in counts.most_common() if w.lower() in TRUE_WORDS]
  false = [w for w, _ in counts.most_common() if w.lower() in FALSE_WORDS]
  return (true[0] if true else "true"), (false[0] if false else "false")


# --- Reading cells.


def numbers(col: pa.ChunkedArray, what: str, first_row: int) -> np.ndarray:
  """A column as float64 [N], NaN for missing cells; anything but numbers is an error naming
  the row (counted from `first_row`)."""
  col = _decoded(col)
  if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
    values = col.to_numpy().astype(np.float64)  # nulls become NaN
  else:
    if is_numeric(col.type):  # bool, decimal, null
      parsed = col.cast(pa.float64())
    else:
      if not is_text(col.type):
        try:
          col = col.cast(pa.string())
        except pa.ArrowException as e:
          raise UsageError(f"{what} holds {col.type} values, not numbers") from e
      parsed = parse_numbers(col)
      if parsed is None:
        i = _first_unparsable(col)
        raise UsageError(
          f"{what} row {i + first_row} holds {shown(col[i].as_py())}, not a number (use empty "
          "cells for missing values)"
        )
    values = pc.fill_null(parsed, math.nan).to_numpy()
  if values.dtype.kind == "f":
    infinite = np.isinf(values)
    if infinite.any():
      i = int(np.flatnonzero(infinite)[0])
      raise UsageError(
        f"{what} row {i + first_row} holds {values[i]}, not a finite number (too large for a "
        "float64, or written inf; use empty cells for missing values)"
      )
  return values


def booleans(col: pa.ChunkedArray, what: str, first_row: int) -> np.ndarray:
  """A boolean column as 0/1 float64 [N], NaN for missing cells."""
  col = _decoded(col)
  if pa.types.is_boolean(col.type):
    return pc.fill_null(col.cast(pa.float64()), math.nan).to_numpy()
  if is_numeric(col.type):
    values = numbers(col, what, first_row)
    bad = ~np.isnan(values) & (values != 0) & (values != 1)
  else:
    words = pc.utf8_lower(pc.utf8_trim_whitespace(col.cast(pa.string())))
    true = pc.is_in(words, pa.array(TRUE_WORDS)).to_numpy(zero_copy_only=False)
    false = pc.is_in(words, pa.array(FALSE_WORDS)).to_numpy(zero_copy_only=False)
    null = words.is_null().to_numpy(zero_copy_only=False)
    values = np.where(true, 1.0, np.where(false, 0.0, math.nan))
    bad = ~(true | false | null)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise UsageError(
      f"{what} row {i + first_row} holds {shown(col[i].as_py())}, not a boolean (true/false, "
      "yes/no, y/n, t/f or 1/0; empty for missing)"
    )
  return values


def category_text(col: pa.ChunkedArray) -> np.ndarray:
  """A column's cells as category names [N] object (str; None for missing): text trimmed,
  integral numbers without ".0", booleans as true/false."""
  col = _decoded(col)
  if pa.types.is_boolean(col.type):
    col = pc.if_else(col, "true", "false")
  elif pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
    values = col.cast(pa.float64()).to_pylist()
    return np.array([None if v is None or v != v else number_text(v) for v in values], object)
  elif not is_text(col.type):
    col = col.cast(pa.string())
  text = pc.utf8_trim_whitespace(col.cast(pa.string()))
  return np.array(text.to_pylist(), dtype=object)


def parse_numbers(text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | None:
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
    if parse_numbers(text.slice(0, mid)) is None:
      bad = mid
    else:
      good = mid
  return good


def is_numeric(t: pa.DataType) -> bool:
  return (
    pa.types.is_integer(t)
    or pa.types.is_floating(t)
    or pa.types.is_boolean(t)
    or pa.types.is_decimal(t)
    or pa.types.is_null(t)
  )


def is_text(t: pa.DataType) -> bool:
  return pa.types.is_string(t) or pa.types.is_large_string(t)


def _decoded(col: pa.ChunkedArray) -> pa.ChunkedArray:
  return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def number_text(v) -> str:
  return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def shown(value) -> str:
  """A cell as it appears in a one-line message: quoted, escaped, cut short."""
  text = repr(value if isinstance(value, str) else str(value))
  return text if len(text) <= 40 else text[:36] + "...'"


def listed(names) -> str:
  """At most _MAX_LISTED names, quoted, then '...'."""
  names = list(names)
  shown_names = ", ".join(repr(n) for n in names[:_MAX_LISTED])
  return shown_names + (", ..." if len(names) > _MAX_LISTED else "")
