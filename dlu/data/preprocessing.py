"""How a table's feature columns become model inputs: missing cells filled, then each column
offset and scaled, with statistics fitted on the training split only.

    prep = fit_preprocessing(names, x_train_raw, impute="mean", scaling="standard")
    prep.save(os.path.join(workdir, "preprocessing.json"))
    x = Preprocessing.load(path).transform(match_columns(names, x_raw, prep.columns, what), what)

Evaluation and inference load the saved Preprocessing, so new rows become exactly the inputs the
model was trained on: same columns (matched by name), same fill values, same offsets and scales,
same class indices.

The statistics are scikit-learn's (SimpleImputer, StandardScaler, MinMaxScaler, fitted on the
training rows, NaN cells ignored), kept as plain numbers: preprocessing.json holds them (no pickle),
and `transform` applies them with StandardScaler's formula, (raw - offset) / scale, for both
scalings. Reading files is tables' job.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from dlu import files
from dlu.data.columns import Schema
from dlu.errors import UsageError

FEATURE_SCALINGS = ("standard", "minmax", "none")
IMPUTE = ("none", "mean", "median", "model")
#: --impute's values: IMPUTE and auto (model where the table has missing cells and the model
#: fills them, else none).
IMPUTE_FLAG = ("auto", *IMPUTE)
JSON_VERSION = 1
SCHEMA_VERSION = 2  # a file with a schema (column kinds, categories)
_MAX_LISTED = 10


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: compare by identity
class Preprocessing:
  """How raw feature columns become model inputs: fitted on the training split, stored in a run's
  workdir (preprocessing.json), applied unchanged at evaluation and inference."""

  columns: tuple[str, ...]  # feature columns, in the model's order
  impute: str  # one of IMPUTE; "model": missing cells stay NaN, for the model to mask and fill
  fill: np.ndarray | None  # [D] float64 values that replace missing cells (mean, median only)
  scaling: str  # one of FEATURE_SCALINGS
  offset: np.ndarray  # [D] float64; model input = (raw - offset) / scale
  scale: np.ndarray  # [D] float64 (ones and zeros offset for "none")
  label_column: str | None = None
  classes: tuple[str, ...] | None = None  # label values (as str) in class-index order
  # A table of more than numbers: each column's kind and categories; `columns` are then its
  # encoded columns (dlu.data.columns). None: the columns are the file's, numbers only.
  schema: Schema | None = None

  @property
  def source_columns(self) -> tuple[str, ...]:
    """The feature columns a table must hold (their encoded form is `columns`)."""
    return self.schema.names if self.schema is not None else self.columns

  def __post_init__(self):
    # Normalises types and freezes the arrays, so a loaded file is checked once, here.
    columns = tuple(self.columns)
    d = len(columns)
    if not all(isinstance(c, str) for c in columns) or len(set(columns)) != d:
      raise UsageError(f"preprocessing: columns must be distinct names, got {list(columns)}")
    if self.impute not in IMPUTE or self.scaling not in FEATURE_SCALINGS:
      raise UsageError(
        f"preprocessing: impute {self.impute!r} / scaling {self.scaling!r}; expected one of "
        f"{', '.join(IMPUTE)} / {', '.join(FEATURE_SCALINGS)}"
      )
    arrays = {"offset": self.offset, "scale": self.scale}
    if (self.fill is None) != (self.impute in ("none", "model")):
      raise UsageError(
        f"preprocessing: impute {self.impute!r} needs fill values exactly when mean or median"
      )
    if self.fill is not None:
      arrays["fill"] = self.fill
    for field, value in arrays.items():
      a = np.array(value, np.float64)
      if a.shape != (d,):
        raise UsageError(f"preprocessing: {field} has shape {a.shape}, expected ({d},)")
      a.flags.writeable = False
      object.__setattr__(self, field, a)
    if np.any(self.scale == 0) or not np.all(np.isfinite(self.scale)):
      raise UsageError("preprocessing: every scale must be finite and non-zero")
    if self.schema is not None and self.schema.encoded_names != columns:
      raise UsageError("preprocessing: columns must be the schema's encoded columns")
    classes = None if self.classes is None else tuple(str(c) for c in self.classes)
    object.__setattr__(self, "columns", columns)
    object.__setattr__(self, "classes", classes)

  def transform(self, x_raw: np.ndarray, what: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Raw features [N, D] (NaN = missing) -> float32 model inputs: fill, then scale. `rows`:
    each row's number in messages (default: from 1)."""
    return self._apply(np.array(x_raw, np.float64), what, rows)

  def _apply(self, x: np.ndarray, what: str, rows: np.ndarray | None = None) -> np.ndarray:
    """transform, overwriting the float64 array `x` (load_table's own copies: no second one)."""
    if x.ndim != 2 or x.shape[1] != len(self.columns):
      raise UsageError(
        f"{what}: features have shape {x.shape}, expected [N, {len(self.columns)}] "
        f"(columns {listed(self.columns)})"
      )
    missing = np.isnan(x)
    if self.fill is not None:
      np.copyto(x, self.fill, where=missing)
    elif missing.any() and self.impute != "model":
      j = int(np.flatnonzero(missing.any(axis=0))[0])
      i = int(np.flatnonzero(missing[:, j])[0])
      raise UsageError(missing_message(what, self.columns[j], f"row {_row(rows, i)}"))
    x -= self.offset
    x /= self.scale
    with np.errstate(over="ignore", invalid="ignore"):
      out = x.astype(np.float32)
    overflow = np.isinf(out) if self.impute == "model" else ~np.isfinite(out)
    if overflow.any():
      i, j = (int(k) for k in np.argwhere(overflow)[0])
      raw = x[i, j] * self.scale[j] + self.offset[j]
      scaled = "" if self.scaling == "none" else f" once scaled ({x[i, j]:.3g})"
      raise UsageError(
        f"{what}: column {self.columns[j]!r} row {_row(rows, i)} holds {raw:.6g}, beyond a "
        f"model input's float32 range (3.4e38){scaled}; fix the cell or drop the column"
      )
    return out

  def inverse(self, x: np.ndarray) -> np.ndarray:
    """Model units -> raw units, float64 (filled cells stay filled)."""
    return np.asarray(x, np.float64) * self.scale + self.offset

  def to_json(self) -> str:
    """Every field; floats go through repr, so from_json gives back identical values."""
    fields = {
      "version": JSON_VERSION,
      "columns": list(self.columns),
      "impute": self.impute,
      "fill": None if self.fill is None else self.fill.tolist(),
      "scaling": self.scaling,
      "offset": self.offset.tolist(),
      "scale": self.scale.tolist(),
      "label_column": self.label_column,
      "classes": None if self.classes is None else list(self.classes),
    }
    if self.schema is not None:
      fields["version"] = SCHEMA_VERSION
      fields["schema"] = self.schema.to_dict()
    return json.dumps(fields, indent=1) + "\n"

  @classmethod
  def from_json(cls, text: str) -> Preprocessing:
    try:
      fields = json.loads(text)
      if not isinstance(fields, dict):
        raise TypeError(f"expected a JSON object, got {type(fields).__name__}")
      if fields.get("version") not in (JSON_VERSION, SCHEMA_VERSION):
        raise ValueError(
          f"version {fields.get('version')!r}, expected {JSON_VERSION} or {SCHEMA_VERSION}"
        )
      schema = None
      if fields.get("schema") is not None:
        schema = Schema.from_dict(fields["schema"])
      label_column = fields.get("label_column")
      if label_column is not None and not isinstance(label_column, str):
        raise TypeError(f"label_column {label_column!r} is not a string")
      for key in ("columns", "offset", "scale", "fill", "classes"):
        if not isinstance(fields.get(key, []), (list, type(None))):
          raise TypeError(f"{key} is not a list")
      return cls(
        columns=tuple(fields["columns"]),
        impute=fields["impute"],
        fill=fields["fill"],
        scaling=fields["scaling"],
        offset=fields["offset"],
        scale=fields["scale"],
        label_column=label_column,
        classes=None if fields.get("classes") is None else tuple(fields["classes"]),
        schema=schema,
      )
    except UsageError:
      raise
    except KeyError as e:
      raise UsageError(f"invalid preprocessing JSON: no field {e}") from e
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
      raise UsageError(f"invalid preprocessing JSON: {first_line(e)}") from e

  def save(self, path: str) -> None:
    """Writes atomically: a reader sees the old file or the new one, never half of one."""
    with files.atomic_write(path) as f:
      f.write(self.to_json())

  @classmethod
  def load(cls, path: str) -> Preprocessing:
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except (OSError, UnicodeDecodeError) as e:
      reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
      raise UsageError(
        f"{path}: cannot read the preprocessing ({reason}); expected the preprocessing.json "
        "that training wrote in its workdir"
      ) from e
    try:
      return cls.from_json(text)
    except UsageError as e:
      raise UsageError(f"{path}: {e}") from e


def fit_preprocessing(
  columns,
  x_train_raw,
  *,
  impute,
  scaling,
  label_column=None,
  classes=None,
  what="--dataset",
  schema: Schema | None = None,
  rows: np.ndarray | None = None,
  model_imputes: bool = False,
) -> Preprocessing:
  """Fill values and offsets/scales from the training rows only: scikit-learn's SimpleImputer
  (mean, median), StandardScaler (mean, population std) and MinMaxScaler (min, max - min; 1 for
  a constant column), each ignoring missing (NaN) cells. With a `schema`, only its numeric
  columns are scaled (booleans and one-hot codes stay 0/1). `rows`: each training row's number
  in the file, for messages (default: from 1). `impute="auto"`: see `resolve_impute`."""
  check_choices(impute, scaling)
  columns = tuple(columns)
  x = np.asarray(x_train_raw, np.float64)
  impute = resolve_impute(impute, bool(np.isnan(x).any()), model_imputes)
  if x.ndim != 2 or x.shape[1] != len(columns) or not len(x):
    raise UsageError(
      f"{what}: training features have shape {x.shape}, expected [N >= 1, {len(columns)}]"
    )
  infinite = np.isinf(x)
  if infinite.any():
    i, j = (int(k) for k in np.argwhere(infinite)[0])
    where = f"training row {i + 1}" if rows is None else f"row {rows[i]}"
    raise UsageError(
      f"{what}: column {columns[j]!r} holds {x[i, j]} at {where}; expected finite "
      "numbers (NaN for missing values)"
    )
  empty = np.flatnonzero(np.isnan(x).all(axis=0))
  if len(empty):
    raise UsageError(
      f"{what}: column {columns[empty[0]]!r} has no values on the training split (every cell "
      "is missing); drop the column"
    )
  from sklearn.impute import SimpleImputer  # only fitting needs scikit-learn (and its start-up)

  fill = None
  if impute in ("mean", "median"):
    fill = SimpleImputer(strategy=impute).fit(x).statistics_
  d = len(columns)
  offset, scale = np.zeros(d), np.ones(d)
  scaled = np.ones(d, bool) if schema is None else schema.scaled
  if scaling != "none" and scaled.any():
    offset[scaled], scale[scaled] = _fit_scaling(
      x[:, scaled], [c for c, s in zip(columns, scaled, strict=True) if s], scaling, what, rows
    )
  return Preprocessing(
    columns=columns,
    impute=impute,
    fill=fill,
    scaling=scaling,
    offset=offset,
    scale=scale,
    label_column=label_column,
    classes=None if classes is None else tuple(classes),
    schema=schema,
  )


def _fit_scaling(x, columns, scaling, what, rows) -> tuple[np.ndarray, np.ndarray]:
  """(offset, scale) of each column; a column whose scale overflows (a huge cell) named with
  the row of its largest cell."""
  from sklearn.preprocessing import MinMaxScaler, StandardScaler  # noqa: PLC0415

  with np.errstate(over="ignore", invalid="ignore"):
    minmax = MinMaxScaler().fit(x)
    constant = minmax.data_range_ == 0  # exact: a constant column's variance may not be exactly 0
  if scaling == "standard":
    if constant.any():
      raise UsageError(
        f"{what}: column {columns[np.flatnonzero(constant)[0]]!r} is constant on the training "
        "split; --feature_scaling=standard cannot scale it (drop the column or use "
        "--feature_scaling=minmax|none)"
      )
    with np.errstate(over="ignore", invalid="ignore"):
      standard = StandardScaler().fit(x)
    # sqrt(var_), the population std, not scale_: scale_ is 1 for columns sklearn deems nearly
    # constant, and those were scaled by their std before (only exactly constant ones refused)
    offset, scale = standard.mean_, np.sqrt(standard.var_)
  else:  # minmax; a constant column maps to 0
    offset, scale = minmax.data_min_, np.where(constant, 1.0, minmax.data_range_)
  bad = ~(np.isfinite(scale) & np.isfinite(offset))
  if bad.any():
    j = int(np.flatnonzero(bad)[0])
    i = int(np.nanargmax(np.abs(x[:, j])))
    row = f"training row {i + 1}" if rows is None else f"row {rows[i]}"
    raise UsageError(
      f"{what}: column {columns[j]!r} {row} holds {x[i, j]:.6g}, too large to scale (the "
      f"column's {'variance' if scaling == 'standard' else 'range'} overflows float64); fix the "
      "cell or drop the column"
    )
  return offset, scale


def match_columns(
  names: list[str],
  x_raw: np.ndarray,
  columns: tuple[str, ...],
  what: str,
  *,
  label_column: str | None = None,
) -> np.ndarray:
  """x_raw's columns (named `names`) in the order of `columns`, matched by name: the file must
  hold exactly those feature columns. `label_column`, the stored label, only sharpens the error
  when it was read as a feature."""
  position = {name: j for j, name in enumerate(names)}
  stored = set(columns)
  missing = [c for c in columns if c not in position]
  extra = [c for c in names if c not in stored]
  if missing or extra:
    problems = []
    if missing:
      problems.append(f"lacks the feature columns {listed(missing)}")
    if extra:
      hint = ""
      if label_column in extra:
        hint = f" ({label_column!r} was the label: pass --label_column={label_column})"
      problems.append(f"has columns the model was not trained on: {listed(extra)}{hint}")
    raise UsageError(
      f"{what}: {' and '.join(problems)}; expected the {len(columns)} feature columns the model "
      "was trained on"
    )
  order = [position[c] for c in columns]
  return x_raw if order == list(range(len(names))) else x_raw[:, order]


# --- helpers ---


def _row(rows: np.ndarray | None, i: int) -> int:
  return i + 1 if rows is None else int(rows[i])


def resolve_impute(impute: str, has_missing: bool, model_imputes: bool) -> str:
  """--impute=auto made concrete: model where the table has missing cells and the model takes
  them (autoencoders, VAEs on tables), else none (a missing cell is then an error)."""
  if impute != "auto":
    return impute
  return "model" if has_missing and model_imputes else "none"


def check_choices(impute: str, scaling: str) -> None:
  if impute not in IMPUTE_FLAG:
    raise UsageError(f"--impute={impute}: expected one of {', '.join(IMPUTE_FLAG)}")
  if scaling not in FEATURE_SCALINGS:
    raise UsageError(f"--feature_scaling={scaling}: expected one of {', '.join(FEATURE_SCALINGS)}")


def missing_message(where: str, column: str, row: str) -> str:
  return (
    f"{where}: column {column!r} has missing values (first at {row}); fill them, pass "
    "--impute=mean|median, or train a model that masks them (--impute=model: ae_mlp, ae_seed, "
    "vae)"
  )


def listed(names) -> str:
  """At most _MAX_LISTED names, quoted, then '...'."""
  names = list(names)
  shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
  return shown + (", ..." if len(names) > _MAX_LISTED else "")


def first_line(e: BaseException) -> str:
  """The first line of an exception's message, cut short (pyarrow quotes whole CSV rows)."""
  lines = str(e).strip().splitlines()
  line = lines[0] if lines else type(e).__name__
  return line if len(line) <= 200 else line[:197] + "..."
