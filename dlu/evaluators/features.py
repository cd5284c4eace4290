"""The `features` evaluator: what helps on vectors (tables) where images get PNG grids.

Per-feature reconstruction error of the test split (mean squared error of each column, in the
model's units: standardised columns are comparable) as `images/feature_error_STEP.png` (the
worst columns) and `feature_error_STEP.csv` (all of them), and a 2-D PCA map of the test
embeddings, coloured by label when there are labels (`images/embedding_pca_STEP.png`).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from dlu.evaluators.registry import Inputs, register
from dlu.metrics import clustering
from dlu.runtime import batched_eval, parallel

#: Columns drawn in the bar chart (all of them are in the CSV).
WORST_SHOWN = 30


def _columns(exp: Any, d: int) -> list[str]:
  pre = exp.dataset.preprocessing
  return list(pre.columns) if pre is not None else [f"f{i}" for i in range(d)]


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
    errors = np.mean(np.square(x_hat - ds.x_test), axis=0)  # [D]
    names = _columns(exp, len(errors))
    worst = int(np.argmax(errors))
    out.update(feature_mse_max=float(errors[worst]), feature_mse_worst=names[worst])
    if lead:
      with open(os.path.join(exp.ctx.workdir, f"feature_error_{step:07d}.csv"), "w") as f:
        rows = csv.writer(f)
        rows.writerow(["column", "test_mse"])
        rows.writerows((n, f"{e:.6g}") for n, e in zip(names, errors, strict=True))
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
