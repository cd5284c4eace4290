"""Time series read from files: UCR/UEA `.ts`, `.tsv`/`.csv` with one series per row, `.npz`
with `x` [N, T] or [N, T, C]; and how they become model inputs (`SeriesPreprocessing`: one length,
scaled, float32 [N, T, C] with NaN where a step is missing or padded).

The NaN steps are the mask: the series models (`dlu.families.sequence`) read
`isfinite(x)` as the observed steps and score their reconstructions only there.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from dlu.errors import UsageError

SCALINGS = ("znorm", "global", "none")
SUFFIXES = (".ts", ".tsv", ".csv", ".npz")
FILE_NAME = "series.json"  # WORKDIR/series.json: how a run's series were made model inputs
_MIN_STD = 1e-8  # a constant series (or channel) is centred, not divided


@dataclasses.dataclass
class RawSeries:
  """Series as read: each [T_i, C] float64 (NaN missing, trailing missing steps dropped)."""

  series: list[np.ndarray]
  labels: np.ndarray | None  # [N] label text, or None when unlabelled
  path: str


def _trim(s: np.ndarray) -> np.ndarray:
  """`s` [T, C] without its trailing steps where no channel is observed."""
  observed = np.flatnonzero(np.isfinite(s).any(axis=1))
  return s[: observed[-1] + 1] if len(observed) else s[:0]


def _at(what: str, path: str) -> str:
  """`what` naming `path` once (a series:FILE names it already; a directory's files do not)."""
  return what if what.endswith(path) else f"{what}: {path}"


def _numbers(cells: Sequence[str], where: str) -> np.ndarray:
  out = np.empty(len(cells), np.float64)
  for j, cell in enumerate(cells):
    cell = cell.strip()
    if cell in ("?", "", "NaN", "nan", "NA"):
      out[j] = np.nan
      continue
    try:
      out[j] = float(cell)
    except ValueError:
      raise UsageError(
        f"{where}: value {j + 1} is {cell[:30]!r}; expected a number, or ? / NaN for a missing one"
      ) from None
    if np.isinf(out[j]):
      raise UsageError(f"{where}: value {j + 1} is infinite; expected a finite number or NaN")
  return out


def _read_lines(path: str, what: str) -> list[str]:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().splitlines()
  except UnicodeDecodeError as e:
    raise UsageError(f"{what}: {path} is not UTF-8 text (byte {e.start})") from None
  except OSError as e:
    raise UsageError(f"{what}: cannot read {path} ({e.strerror})") from None


def read_ts(path: str, what: str) -> RawSeries:
  """A UCR/UEA `.ts` file: `@` header lines, then after `@data` one series a line, channels
  separated by `:`, values by `,`, the class last when `@classLabel true`."""
  lines = _read_lines(path, what)
  labelled, data_at, channels = False, None, None
  for i, line in enumerate(lines):
    text = line.strip()
    if not text or text.startswith("#"):
      continue
    if not text.startswith("@"):
      raise UsageError(
        f"{_at(what, path)} line {i + 1}: {text[:30]!r} comes before @data; expected @ header lines"
      )
    key, _, value = text.partition(" ")
    key, value = key.lower(), value.strip().lower()
    if key == "@timestamps" and value.startswith("true"):
      raise UsageError(
        f"{_at(what, path)} line {i + 1}: @timeStamps true is not read; expected values without "
        "time stamps"
      )
    if key == "@classlabel":
      labelled = value.startswith("true")
    if key == "@data":
      data_at = i
      break
  if data_at is None:
    raise UsageError(f"{what}: {path} has no @data line; expected a .ts file (UCR/UEA format)")
  series, labels = [], []
  for i in range(data_at + 1, len(lines)):
    text = lines[i].strip()
    if not text or text.startswith("#"):
      continue
    where = f"{_at(what, path)} line {i + 1}"
    fields = text.split(":")
    if labelled:
      if len(fields) < 2:
        raise UsageError(f"{where}: no class after the values; expected VALUES:CLASS")
      labels.append(fields.pop().strip())
    if channels is None:
      channels = len(fields)
    elif len(fields) != channels:
      raise UsageError(
        f"{where}: {len(fields)} channels; expected {channels} as on the first series "
        "(channels separated by ':')"
      )
    dims = [_numbers(f.split(","), f"{where}, channel {c + 1}") for c, f in enumerate(fields)]
    length = max(len(d) for d in dims)
    s = np.full((length, channels), np.nan)
    for c, d in enumerate(dims):
      s[: len(d), c] = d
    series.append(_trim(s))
  if not series:
    raise UsageError(f"{what}: {path} has no series after @data")
  return RawSeries(series, np.asarray(labels, dtype=object) if labelled else None, path)


def read_delimited(path: str, what: str, label_column: str | None = None) -> RawSeries:
  """`.tsv` / `.csv`: one univariate series a row, no header unless its first row is not
  numbers. The label is the first cell (UCR's TSV archive) unless `label_column` says
  otherwise: a 0-based column index, a header name, `last`, or `none` (unlabelled)."""
  lines = _read_lines(path, what)
  sep = "\t" if path.endswith(".tsv") else ","
  rows = [(i, line.split(sep)) for i, line in enumerate(lines) if line.strip()]
  if not rows:
    raise UsageError(f"{what}: {path} is empty; expected one series a row")
  header = None
  first = rows[0][1]
  if not any(_is_number(c) for c in first[1:]):
    header, rows = [c.strip() for c in first], rows[1:]
  col = 0 if label_column is None else label_column
  if isinstance(col, str):
    if col.lower() == "none":
      col = None
    elif col.lower() == "last":
      col = -1
    elif col.strip().lstrip("-").isdigit():
      col = int(col)
    elif header is not None and col in header:
      col = header.index(col)
    else:
      raise UsageError(
        f"--label_column={col}: {path} has no such column; expected a 0-based index, a header "
        "name, last or none"
      )
  series, labels = [], []
  for i, cells in rows:
    where = f"{_at(what, path)} line {i + 1}"
    if col is not None:
      if not -len(cells) <= col < len(cells):
        raise UsageError(f"{where}: {len(cells)} cells, no column {col} for the label")
      labels.append(cells[col].strip())
      cells = cells[:col] + cells[col + 1 :] if col != -1 else cells[:-1]
    values = _numbers(cells, where)
    s = _trim(values[:, None])
    if not len(s):
      raise UsageError(f"{where}: no values; expected a series of numbers")
    series.append(s)
  if not series:
    raise UsageError(f"{what}: {path} has a header and no series")
  return RawSeries(series, np.asarray(labels, dtype=object) if col is not None else None, path)


def _is_number(cell: str) -> bool:
  try:
    float(cell)
    return True
  except ValueError:
    return cell.strip() in ("?", "", "NaN", "nan", "NA")


def read_npz(path: str, what: str) -> RawSeries:
  """`.npz` with `x` [N, T] or [N, T, C] (NaN missing) and optional labels `y` [N]."""
  try:
    with np.load(path, allow_pickle=False) as f:
      found = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise UsageError(f"{what}: cannot read {path} as .npz ({str(e).splitlines()[0]})") from None
  if "x" not in found:
    raise UsageError(f"{what}: {path} has no array 'x'; expected x [N, T] or [N, T, C]")
  x = found["x"]
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or not x.shape[0] or not x.shape[1]:
    raise UsageError(f"{what}: {path}: x has shape {x.shape}; expected [N, T] or [N, T, C]")
  if not np.issubdtype(x.dtype, np.number):
    raise UsageError(f"{what}: {path}: x has dtype {x.dtype}; expected numbers")
  x = x.astype(np.float64)
  if np.isinf(x).any():
    first = tuple(int(i) for i in np.argwhere(np.isinf(x))[0])
    raise UsageError(f"{what}: {path}: x holds infinite values (the first at {first})")
  y = found.get("y")
  if y is not None and (y.ndim != 1 or len(y) != len(x)):
    raise UsageError(f"{what}: {path}: y has shape {y.shape}; expected ({len(x)},)")
  labels = None if y is None else np.asarray([str(v) for v in y.tolist()], dtype=object)
  return RawSeries([_trim(s) for s in x], labels, path)


def read_file(path: str, what: str, label_column: str | None = None) -> RawSeries:
  """A series file by its suffix."""
  if not os.path.isfile(path):
    raise UsageError(f"{what}: {path} does not exist; expected a {', '.join(SUFFIXES)} file")
  if path.endswith(".ts"):
    raw = read_ts(path, what)
  elif path.endswith((".tsv", ".csv")):
    raw = read_delimited(path, what, label_column)
  elif path.endswith(".npz"):
    raw = read_npz(path, what)
  else:
    raise UsageError(f"{what}: {path} has an unknown suffix; expected one of {', '.join(SUFFIXES)}")
  for i, s in enumerate(raw.series):
    if not len(s):
      raise UsageError(f"{what}: {path}: series {i + 1} has no observed value")
  return raw


def source_files(path: str, what: str) -> dict[str, str]:
  """The files `read_source` reads: {"all": path} for a file, {"train": ..., "test": ...} for
  a directory's NAME_TRAIN / NAME_TEST files."""
  if not os.path.isdir(path):
    return {"all": path}
  found = {}
  for split in ("TRAIN", "TEST"):
    names = sorted(glob.glob(os.path.join(path, f"*_{split}.*")))
    # The same split in several forms (UCR ships .ts beside .tsv, .arff): the first of SUFFIXES.
    names = next(
      (
        [p for p in names if p.endswith(suffix)]
        for suffix in SUFFIXES
        if any(p.endswith(suffix) for p in names)
      ),
      [],
    )
    if len(names) != 1:
      listed = ", ".join(map(os.path.basename, names)) or "none"
      raise UsageError(
        f"{what}: {path} holds {len(names)} *_{split} files ({listed}); "
        f"expected one NAME_{split} file ({', '.join(SUFFIXES)})"
      )
    found[split.lower()] = names[0]
  return found


def read_source(path: str, what: str, label_column: str | None = None) -> dict[str, RawSeries]:
  """{"all": ...} for a file, {"train": ..., "test": ...} for a directory holding
  NAME_TRAIN.SUFFIX and NAME_TEST.SUFFIX (UCR/UEA's published split)."""
  names = source_files(path, what)
  if "all" in names:
    return {"all": read_file(path, what, label_column)}
  found = {k: read_file(f, what, label_column) for k, f in names.items()}
  channels = {k: {s.shape[1] for s in r.series} for k, r in found.items()}
  if channels["train"] != channels["test"]:
    raise UsageError(
      f"{what}: the TRAIN and TEST files have {channels['train']} and "
      f"{channels['test']} channels; expected the same"
    )
  if (found["train"].labels is None) != (found["test"].labels is None):
    raise UsageError(f"{what}: only one of the TRAIN and TEST files has labels")
  return found


def check_channels(raw: RawSeries, what: str) -> int:
  counts = sorted({s.shape[1] for s in raw.series})
  if len(counts) != 1:
    raise UsageError(f"{what}: {raw.path}: series with {counts} channels; expected one count")
  return counts[0]


def resample(s: np.ndarray, length: int) -> np.ndarray:
  """`s` [T, C] linearly interpolated to [length, C] over the same span; a step whose nearest
  source step is missing stays missing."""
  t = np.linspace(0.0, len(s) - 1, length)
  out = np.full((length, s.shape[1]), np.nan)
  nearest = np.rint(t).astype(int)
  for c in range(s.shape[1]):
    ok = np.isfinite(s[:, c])
    if ok.any():
      out[:, c] = np.interp(t, np.flatnonzero(ok), s[ok, c])
      out[~ok[nearest], c] = np.nan
  return out


def znorm(x: np.ndarray) -> np.ndarray:
  """Each series and channel of `x` [N, T, C] to zero mean and unit variance over its observed
  steps (a constant one only centred)."""
  with np.errstate(invalid="ignore"), _quiet():
    mean = np.nanmean(x, axis=1, keepdims=True)
    std = np.nanstd(x, axis=1, keepdims=True)
  std = np.where(np.isfinite(std) & (std > _MIN_STD), std, 1.0)
  return (x - np.nan_to_num(mean)) / std


class _quiet:
  """Silences numpy's 'mean of empty slice' (a channel never observed in a series)."""

  def __enter__(self):
    import warnings  # noqa: PLC0415

    self._w = warnings.catch_warnings()
    self._w.__enter__()
    warnings.simplefilter("ignore", RuntimeWarning)

  def __exit__(self, *exc):
    self._w.__exit__(*exc)


@dataclasses.dataclass(frozen=True)
class SeriesPreprocessing:
  """How raw series become model inputs [N, length, channels] float32 (NaN: not observed),
  fitted on the training split; kept in WORKDIR/series.json and applied as is by evaluation
  and `dlu.load_run`. `resampled`: every series interpolated to `length` (--series_length);
  else padded to it with missing steps (`length` the training split's longest)."""

  length: int
  channels: int
  resampled: bool
  scaling: str = "znorm"
  mean: tuple[float, ...] | None = None  # global scaling: per channel, of the training split
  std: tuple[float, ...] | None = None
  FILE_NAME = FILE_NAME

  def transform(self, series: Sequence[np.ndarray], what: str = "series") -> np.ndarray:
    out = np.full((len(series), self.length, self.channels), np.nan)
    for i, s in enumerate(series):
      s = np.asarray(s, np.float64)
      s = s[:, None] if s.ndim == 1 else s
      if s.ndim != 2 or s.shape[1] != self.channels:
        raise UsageError(
          f"{what}: series {i + 1} has shape {s.shape}; the run was trained on [T, "
          f"{self.channels}] series"
        )
      s = _trim(s)
      if not len(s):
        raise UsageError(f"{what}: series {i + 1} has no observed value")
      if self.resampled:
        out[i] = resample(s, self.length)
      elif len(s) > self.length:
        raise UsageError(
          f"{what}: series {i + 1} has {len(s)} steps; the run pads to {self.length} (its "
          "longest training series): resample with a run trained with --series_length"
        )
      else:
        out[i, : len(s)] = s
    if self.scaling == "znorm":
      out = znorm(out)
    elif self.scaling == "global":
      out = (out - np.asarray(self.mean)) / np.asarray(self.std)
    return out.astype(np.float32)

  def describe(self) -> str:
    how = "resampled to" if self.resampled else "padded (masked) to"
    return (
      f"series of {self.channels} channel{'s' * (self.channels != 1)}, {how} {self.length} "
      f"steps, {self.scaling} scaling"
    )

  def save(self, path: str) -> None:
    from dlu.files import write_json  # noqa: PLC0415

    write_json(path, {k: v for k, v in dataclasses.asdict(self).items()})

  @classmethod
  def load(cls, path: str) -> SeriesPreprocessing:
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
      mean, std = d.get("mean"), d.get("std")
      return cls(
        length=int(d["length"]),
        channels=int(d["channels"]),
        resampled=bool(d["resampled"]),
        scaling=str(d["scaling"]),
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
      )
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UsageError(
        f"{path} is unreadable ({type(e).__name__}: {e}); expected series.json"
      ) from None


def fit_preprocessing(
  series: Sequence[np.ndarray], channels: int, *, length: int = 0, scaling: str = "znorm"
) -> SeriesPreprocessing:
  """The preprocessing of a training split: `length` > 0 resamples to it, 0 pads to the longest."""
  if scaling not in SCALINGS:
    raise UsageError(f"--series_scaling={scaling!r}; expected one of {', '.join(SCALINGS)}")
  if length < 0 or length == 1:
    raise UsageError(f"--series_length={length}; expected 0 (pad to the longest) or >= 2")
  pre = SeriesPreprocessing(
    length or max(len(s) for s in series), channels, bool(length), scaling="none"
  )
  if scaling != "global":
    return dataclasses.replace(pre, scaling=scaling)
  x = pre.transform(series).astype(np.float64)
  with _quiet():
    mean, std = np.nanmean(x, axis=(0, 1)), np.nanstd(x, axis=(0, 1))
  std = np.where(np.isfinite(std) & (std > _MIN_STD), std, 1.0)
  return dataclasses.replace(
    pre, scaling="global", mean=tuple(map(float, np.nan_to_num(mean))), std=tuple(map(float, std))
  )


def padded(series: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
  """Series [T_i, C] as one array [N, length (default max T_i), C] float64, NaN after each
  one's end (how records store them: `unpadded` gives them back, as trailing missing steps are
  not kept)."""
  length = max((len(s) for s in series), default=0) if length is None else length
  channels = series[0].shape[1] if len(series) else 1
  out = np.full((len(series), length, channels), np.nan)
  for i, s in enumerate(series):
    out[i, : len(s)] = s
  return out


def unpadded(x: np.ndarray) -> list[np.ndarray]:
  """The series of a padded array [N, T, C]: each without its trailing missing steps."""
  return [_trim(np.asarray(s, np.float64)) for s in x]


def transform_padded(pre: SeriesPreprocessing, what: str, x: np.ndarray) -> np.ndarray:
  """A batch of padded series (records' rows) as model inputs; picklable with
  functools.partial, for reading in worker processes."""
  return pre.transform(unpadded(x), what)


def observed(x: Any) -> Any:
  """The mask of a series batch: 1 where a step is observed, 0 where missing or padded."""
  return x == x  # NaN != NaN; works on numpy and jax arrays alike
