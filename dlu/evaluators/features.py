"""The `features` evaluator: what helps on vectors (tables) where images get PNG grids.

Per-feature reconstruction error of the test split (mean squared error of each column over its
observed cells, in the model's units: standardised columns are comparable) as
`images/feature_error_STEP.png` (the worst columns) and `feature_error_STEP.csv` (all of them);
each feature column's result in the data's own terms in `columns_STEP.csv`: RMSE in the
column's units for numbers, accuracy for booleans and categories (the most likely level), with
their means as `numeric_rmse` (in standard deviations of the training split, under standard
scaling) and `category_acc`;
and a 2-D PCA map of the test embeddings, coloured by label when there are labels
(`images/embedding_pca_STEP.png`).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from dlu import files
from dlu.evaluators.registry import Inputs, register
from dlu.metrics import clustering
from dlu.runtime import batched_eval, parallel

#: Columns drawn in the bar chart (all of them are in the CSV).
WORST_SHOWN = 30


def _columns(exp: Any, d: int) -> list[str]:
  pre = exp.dataset.preprocessing
  return list(pre.columns) if pre is not None else [f"f{i}" for i in range(d)]


def column_results(pre: Any, x_hat: np.ndarray, x: np.ndarray) -> list[dict[str, Any]]:
  """Each feature column's reconstruction on its observed cells, in the data's own terms:
  numbers' RMSE in the column's units (`rmse`) and in the training split's standard deviations
  (`rmse_std`, comparable across columns and tables; under --feature_scaling=standard), booleans' and categories' accuracy (the
  most likely value). `x_hat`, `x`: [N, D] model-space reconstructions and inputs (NaN:
  missing). Rows of a column with no observed cell are left out."""
  x_hat, x = np.asarray(x_hat, np.float64), np.asarray(x, np.float64)
  schema = getattr(pre, "schema", None)
  if schema is not None:
    groups = [(c.name, c.kind, s) for c, s in schema.groups()]
  else:
    names = list(pre.columns) if pre is not None else [f"f{j}" for j in range(x.shape[1])]
    groups = [(n, "numeric", slice(j, j + 1)) for j, n in enumerate(names)]
  scale = pre.scale if pre is not None else np.ones(x.shape[1])
  out = []
  for name, kind, cols in groups:
    block, target = x_hat[:, cols], x[:, cols]
    seen = ~np.isnan(target).any(axis=1)
    if kind == "categorical":
      seen &= np.nan_to_num(target).sum(axis=1) > 0  # an unseen level has no target
    n = int(seen.sum())
    if not n:
      continue
    if kind == "numeric":
      err = block[seen, 0] - target[seen, 0]
      rmse_model = float(np.sqrt(np.mean(np.square(err))))
      out.append(
        dict(column=name, kind=kind, metric="rmse", value=rmse_model * scale[cols.start], cells=n)
      )
      if pre is None or pre.scaling == "standard":  # a model unit is one training std
        out.append(dict(column=name, kind=kind, metric="rmse_std", value=rmse_model, cells=n))
    elif kind == "boolean":
      acc = float(np.mean((block[seen, 0] > 0.5) == (target[seen, 0] > 0.5)))
      out.append(dict(column=name, kind=kind, metric="accuracy", value=acc, cells=n))
    else:
      acc = float(np.mean(block[seen].argmax(axis=1) == target[seen].argmax(axis=1)))
      out.append(dict(column=name, kind=kind, metric="accuracy", value=acc, cells=n))
  return out


def _bar_chart(names: list[str], errors: np.ndarray, path: str, title: str) -> None:
  from matplotlib.figure import Figure  # noqa: PLC0415  (plotting only)

  order = np.argsort(errors)[::-1][:WORST_SHOWN]
  fig = Figure(figsize=(7, 0.22 * len(order) + 1.2), dpi=110)
  ax = fig.subplots()
  ax.barh([names[i] for i in order][::-1], errors[order][::-1], color="tab:blue")
  ax.set_xlabel("test mean squared error (model units)")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)


@register("features", needs=("vectors", "embeddings"))
def feature_metrics(exp: Any, state: Any, inputs: Inputs) -> dict[str, Any]:
  """Per-feature reconstruction error (reconstructing families) and a PCA map of the test
  embeddings, for vector data."""
  ds, step, out = exp.dataset, inputs.step, {}
  images_dir = os.path.join(exp.ctx.workdir, "images")
  lead = parallel.is_lead_process()
  if lead:
    os.makedirs(images_dir, exist_ok=True)
  if exp.family.has_reconstruction:
    recon = inputs.compiled(
      "reconstruct", lambda: parallel.jit_over_images(exp.family.reconstruct, exp.mesh)
    )
    x_hat = batched_eval.per_example(
      recon, state, ds.x_test, mesh=exp.mesh, batch_size=exp.ctx.batch_size
    )
    seen = ~np.isnan(np.asarray(ds.x_test, np.float64))
    sq = np.where(seen, np.square(x_hat - np.nan_to_num(ds.x_test)), 0.0)
    errors = sq.sum(axis=0) / np.maximum(seen.sum(axis=0), 1)  # [D] over observed cells
    names = _columns(exp, len(errors))
    worst = int(np.argmax(errors))
    out.update(feature_mse_max=float(errors[worst]), feature_mse_worst=names[worst])
    table = column_results(ds.preprocessing, x_hat, np.asarray(ds.x_test))
    numeric = [r["value"] for r in table if r["metric"] == "rmse_std"]
    accuracy = [r["value"] for r in table if r["metric"] == "accuracy"]
    if numeric:
      out["numeric_rmse"] = float(np.mean(numeric))
    if accuracy:
      out["category_acc"] = float(np.mean(accuracy))
    if lead:
      with files.atomic_write(
        os.path.join(exp.ctx.workdir, f"feature_error_{step:07d}.csv"), newline=""
      ) as f:
        rows = csv.writer(f, lineterminator="\n")
        rows.writerow(["column", "test_mse"])
        rows.writerows((files.safe_cell(n), f"{e:.6g}") for n, e in zip(names, errors, strict=True))
      with files.atomic_write(
        os.path.join(exp.ctx.workdir, f"columns_{step:07d}.csv"), newline=""
      ) as f:
        rows = csv.writer(f, lineterminator="\n")
        rows.writerow(["column", "kind", "metric", "value", "cells"])
        rows.writerows(
          (files.safe_cell(r["column"]), r["kind"], r["metric"], f"{r['value']:.6g}", r["cells"])
          for r in table
        )
      _bar_chart(
        names,
        errors,
        os.path.join(images_dir, f"feature_error_{step:07d}.png"),
        f"{exp.cfg.model} on {ds.name}, step {step}: the {min(WORST_SHOWN, len(names))} "
        "worst-reconstructed columns",
      )
  z = inputs.embeddings(state, "test")  # on every process: it gathers across them
  if lead:
    points = z if z.shape[1] == 2 else clustering.manifold(z, "pca", dim=2, seed=exp.cfg.seed)
    clustering.scatter_plot(
      points,
      ds.y_test,
      os.path.join(images_dir, f"embedding_pca_{step:07d}.png"),
      title=f"{exp.cfg.model} on {ds.name}, step {step}: PCA of {len(z)} test embeddings",
      class_names=getattr(ds.preprocessing, "classes", None),
    )
  return out
