"""The `series_plots` evaluator: the first --num_images test series drawn over their
reconstructions, a grid of line plots (one panel a series, every channel in it), written through
the run's writers (images/series_reconstructions_STEP.png and TensorBoard)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dlu.evaluators.registry import Inputs, register
from dlu.runtime import batched_eval, parallel

#: Panels a row of the grid.
COLUMNS = 4


def draw(x: np.ndarray, x_hat: np.ndarray, title: str) -> np.ndarray:
  """Series `x` [N, T, C] (NaN not observed) solid over `x_hat` dashed, as an RGB image in
  [0, 1]. [H, W, 3]"""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (plotting only)
  from matplotlib.figure import Figure  # noqa: PLC0415

  n = len(x)
  cols = min(COLUMNS, n)
  rows = math.ceil(n / cols)
  fig = Figure(figsize=(3 * cols, 1.8 * rows + 0.4), dpi=80)
  FigureCanvasAgg(fig)
  axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
  steps = np.arange(x.shape[1])
  for i, ax in enumerate(axes):
    if i >= n:
      ax.axis("off")
      continue
    for c in range(x.shape[2]):
      color = f"C{c % 10}"
      ax.plot(steps, x[i, :, c], color=color, lw=1.2)
      ax.plot(steps, x_hat[i, :, c], color=color, lw=1.0, ls="--", alpha=0.8)
    ax.tick_params(labelsize=6)
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  fig.canvas.draw()
  rgba = np.asarray(fig.canvas.buffer_rgba())
  return rgba[..., :3].astype(np.float32) / 255.0


@register("series_plots", needs=("series", "reconstructions"))
def series_plots(exp: Any, state: Any, inputs: Inputs) -> dict[str, Any]:
  """Originals (solid) over reconstructions (dashed) of the first test series."""
  n = max(1, min(exp.cfg.num_images, len(exp.dataset.x_test), 32))
  x = np.asarray(exp.dataset.x_test[:n])
  recon = inputs.compiled(
    "reconstruct", lambda: parallel.jit_over_images(exp.family.reconstruct, exp.mesh)
  )
  x_hat = batched_eval.per_example(recon, state, x, mesh=exp.mesh, batch_size=exp.ctx.batch_size)
  if parallel.is_lead_process():
    title = (
      f"{exp.cfg.model} on {exp.dataset.name}, step {inputs.step}: {inputs.split} series "
      "(solid) and reconstructions (dashed)"
    )
    shown = np.isfinite(x).any(axis=-1, keepdims=True)  # padding past a series' end not drawn
    image = draw(x, np.where(shown, np.asarray(x_hat), np.nan), title)
    inputs.writer.write_images(inputs.step, {"series_reconstructions": image[None, None]})
  return {}
