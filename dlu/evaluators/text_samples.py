"""The `text_samples` evaluator: a text run's documents as text in the workdir. The first
--num_images documents of the split being scored beside their greedy reconstructions
(text/reconstructions_STEP.txt) and, for the VAE, documents decoded from prior draws (the same
draws at every step: text/samples_STEP.txt) and along the line between the codes of two test
documents (text/interpolations_STEP.txt); each also to TensorBoard's text tab under
`text/NAME`."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlu import files
from dlu.evaluators.registry import Inputs, register
from dlu.runtime import batched_eval, parallel

DIRECTORY = "text"  # WORKDIR/text/
_SAMPLES_KEY, _INTERPOLATION_STEPS = 1, 6


def _write(workdir: str, name: str, inputs: Inputs, blocks: list[str]) -> str:
  """WORKDIR/text/NAME_STEP.txt, and the same text to TensorBoard as text/NAME."""
  os.makedirs(os.path.join(workdir, DIRECTORY), exist_ok=True)
  path = os.path.join(workdir, DIRECTORY, f"{name}_{int(inputs.step):07d}.txt")
  text = "\n".join(blocks) + "\n"
  with files.atomic_write(path) as f:
    f.write(text)
  inputs.save_texts({f"{DIRECTORY}/{name}": text})
  return path


@register("text_samples", needs=("text", "reconstructions"))
def text_samples(exp: Any, state: Any, inputs: Inputs) -> dict[str, Any]:
  family, pre, workdir = exp.family, exp.dataset.preprocessing, exp.ctx.workdir
  n = max(1, min(exp.cfg.num_images, len(exp.dataset.x_test), 32))
  x = np.asarray(exp.dataset.x_test[:n])
  recon = inputs.compiled(
    "reconstruct", lambda: parallel.jit_over_images(family.reconstruct, exp.mesh)
  )
  x_hat = batched_eval.per_example(recon, state, x, mesh=exp.mesh, batch_size=exp.ctx.batch_size)
  originals, decoded = pre.decode(x), pre.decode(np.asarray(x_hat))
  out = {}
  if not parallel.is_lead_process():
    return out
  _write(
    workdir,
    "reconstructions",
    inputs,
    [f"{i + 1}. {a!r}\n -> {b!r}" for i, (a, b) in enumerate(zip(originals, decoded, strict=True))],
  )
  if exp.cfg.model != "text_vae":
    return out
  draw = jax.random.fold_in(exp.ctx.rng, _SAMPLES_KEY)
  samples = pre.decode(np.asarray(jax.jit(family.prior_samples, static_argnums=2)(state, draw, n)))
  _write(workdir, "samples", inputs, [f"{i + 1}. {s!r}" for i, s in enumerate(samples)])
  if n >= 2:
    codes = np.asarray(jax.jit(family.embed)(state, jnp.asarray(x[:2])))
    t = np.linspace(0.0, 1.0, _INTERPOLATION_STEPS)[:, None]
    path = codes[0] + t * (codes[1] - codes[0])
    line = pre.decode(np.asarray(jax.jit(family.generate)(state, jnp.asarray(path))))
    _write(
      workdir,
      "interpolations",
      inputs,
      [
        f"from {originals[0]!r}",
        *(f"  {ti:.2f}: {s!r}" for ti, s in zip(t[:, 0], line, strict=True)),
        f"to {originals[1]!r}",
      ],
    )
  return out
