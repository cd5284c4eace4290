"""The evaluators every family has: its metrics on the test split, its end-of-run bounds and
its image grids (what a family computes is in `dlu/families/`; when it runs is here)."""

from __future__ import annotations

from typing import Any

import jax

from dlu.evaluators.registry import FINAL, Inputs, register
from dlu.runtime import batched_eval, parallel


@register("metrics")
def test_split_metrics(exp: Any, state: Any, inputs: Inputs) -> dict[str, Any]:
  """The family's per-example eval metrics averaged over the test split, and its split
  metrics (clustering-layer scores, active units)."""
  eval_sums = inputs.compiled("eval_sums", lambda: parallel.make_eval_sums(exp.family, exp.mesh))
  labels = exp.dataset.y_test if exp.family.needs_label else None
  metrics = batched_eval.mean_metrics(
    eval_sums,
    state,
    exp.dataset.x_test,
    exp.ctx.rng,
    mesh=exp.mesh,
    batch_size=exp.ctx.batch_size,
    y=labels,
  )
  metrics.update(exp.family.split_metrics(state, exp.dataset, exp.ctx))
  return metrics


@register("likelihood", every=FINAL)
def final_metrics(exp: Any, state: Any, inputs: Inputs) -> dict[str, Any]:
  """The family's expensive metrics (VAEs: the importance-weighted bound nll_iwae and
  bits_per_dim), by default only after the last step."""
  del inputs
  return exp.family.final_metrics(state, exp.dataset, exp.ctx)


@register("images", needs=("images",))
def image_grids(exp: Any, state: Any, inputs: Inputs) -> dict[str, Any]:
  """The family's image grids of the first --num_images test images (reconstructions,
  samples, views), saved as images/NAME_STEP.png and to TensorBoard."""

  def build():
    images = exp.dataset.x_test[: exp.cfg.num_images]
    batch = {"image": jax.make_array_from_process_local_data(parallel.replicated(exp.mesh), images)}
    return parallel.make_images(exp.family, exp.mesh), batch

  make_images, batch = inputs.compiled(f"images/{inputs.split}", build)
  inputs.save_images(jax.device_get(make_images(state, batch, exp.ctx.rng)))
  return {}
