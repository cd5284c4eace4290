"""A trained run applied to new data, from a script or a notebook (and `experiments.apply`).

    import dlu
    run = dlu.load_run("workdirs/ae_table")      # the best (else latest) checkpoint of a workdir
    z = run.encode(x)                             # [N, latent]
    x_hat = run.reconstruct(x)                    # [N, ...] in the data's own units
    s = run.score(x)                              # [N] anomaly score, higher = less like the data
    clusters, confidence = run.assign(x)          # [N] each
    samples = run.sample(16)                      # GANs, VAEs

`x` is in the training data's own units: raw table columns [N, D] in the training column
order (their scaling is the run's stored one), or images [N, H, W, C] as uint8 0..255 or
float in [0, 1]. Every method runs jitted over the devices in padded batches, with the same
functions (and so the same numbers) as training's evaluations and `experiments.evaluate`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from dlu import data
from dlu.errors import UsageError
from dlu.evaluators.clustering import KMEANS_FILE
from dlu.ops import losses
from dlu.runtime import batched_eval, parallel
from dlu.train import experiment


class Run:
  """A trained run: its experiment (`exp`: config, data, family, mesh) and state."""

  def __init__(self, exp: experiment.Experiment, state: Any):
    self.exp, self.state = exp, state
    self.cfg, self.family, self.dataset = exp.cfg, exp.family, exp.dataset
    self._jitted: dict[str, Any] = {}

  def __repr__(self) -> str:
    return (
      f"Run({self.cfg.model} on {self.dataset.name}, step {int(self.state.step)}, "
      f"{self.exp.ctx.workdir})"
    )

  # --- Inputs.

  def inputs(self, x: Any) -> np.ndarray:
    """`x` as the model's stored inputs, checked against the training data. [N, ...]

    Rows on disk (`data.RowArray`: records:, npy:) stay there and are read batch by batch."""
    shape = self.dataset.example_shape
    if isinstance(x, data.RowArray):
      if x.example_shape != shape:
        what = "images of shape" if self.dataset.is_image else "rows of"
        raise UsageError(
          f"inputs are {x.example_shape} per example; the run was trained on {what} {shape}"
        )
      if self.dataset.is_image and x.dtype != self.dataset.x_train.dtype:
        raise UsageError(
          f"inputs are {x.dtype} images; the run was trained on {self.dataset.x_train.dtype}"
        )
      pre = self.dataset.preprocessing
      return x.view(transform=functools.partial(pre.transform, what="inputs")) if pre else x
    x = np.asarray(x)
    if self.dataset.is_image:
      if x.ndim == len(shape) and shape[-1] == 1:
        x = x[..., None]
      if x.shape[1:] != shape:
        raise UsageError(
          f"inputs are {x.shape[1:]} per example; the run was trained on images of shape {shape} "
          "(H, W, C)"
        )
      if x.dtype != np.uint8 and self.dataset.x_train.dtype == np.uint8:
        x = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
      return x
    if x.ndim != 2 or x.shape[1] != shape[0]:
      raise UsageError(
        f"inputs have shape {x.shape}; the run was trained on rows of {shape[0]} features"
      )
    pre = self.dataset.preprocessing
    return pre.transform(x.astype(np.float64), "inputs") if pre is not None else x

  def _per_example(self, name: str, fn: Any, x: np.ndarray) -> np.ndarray:
    if name not in self._jitted:
      self._jitted[name] = parallel.jit_over_images(fn, self.exp.mesh)
    return batched_eval.per_example(
      self._jitted[name], self.state, x, mesh=self.exp.mesh, batch_size=self.exp.ctx.batch_size
    )

  def _to_data_units(self, x: np.ndarray) -> np.ndarray:
    """Model-space outputs in the data's own units: raw columns, or images in [0, 1]."""
    if not self.dataset.is_image:
      pre = self.dataset.preprocessing
      return pre.inverse(x) if pre is not None else x
    low = -1.0 if self.exp.spec.pixel_range == "symmetric" else 0.0
    return np.clip((x - low) / (1.0 - low), 0.0, 1.0)

  # --- What a run does with new data.

  def encode(self, x: Any) -> np.ndarray:
    """Embeddings, as `experiments.evaluate` clusters them. [N, D]"""
    if not self.family.has_embedding:
      raise UsageError(f"--model={self.cfg.model} has no embedding")
    return self._per_example("embed", self.family.embed, self.inputs(x))

  def reconstruct(self, x: Any) -> np.ndarray:
    """Reconstructions in the data's units (raw columns, or images in [0, 1]). [N, ...]"""
    if not self.family.has_reconstruction:
      raise UsageError(f"--model={self.cfg.model} does not reconstruct")
    return self._to_data_units(
      self._per_example("reconstruct", self.family.reconstruct, self.inputs(x))
    )

  def score(self, x: Any) -> np.ndarray:
    """Anomaly scores: reconstruction error (autoencoders, DEC/IDEC), -ELBO at the posterior
    mean (VAEs), minus the discriminator's logit (GANs). Higher: less like the data. [N]"""
    if not self.family.has_score:
      raise UsageError(f"--model={self.cfg.model} has no anomaly score")
    return self._per_example("score", self.family.score, self.inputs(x))

  def assign(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Clusters [N] and their confidence [N]: the run's clustering layer (DEC/IDEC, a
    contrastive cluster head), else the k-means that `experiments.evaluate` fitted on the
    embeddings (confidence: the largest Student-t soft assignment, as DEC's)."""
    x = self.inputs(x)
    head = getattr(self.family, "assignments", None)
    if head is not None:
      q, hard = head(self.state, x)
      return hard, q.max(axis=1)
    path = os.path.join(self.exp.ctx.workdir, KMEANS_FILE)
    if not os.path.isfile(path):
      raise UsageError(
        f"{self.exp.ctx.workdir} has no clustering to assign to: --model={self.cfg.model} has "
        f"no clustering layer, and {KMEANS_FILE} is written by `experiments.evaluate` (k-means "
        "on the embeddings, --manifold=none): run it first"
      )
    with np.load(path) as f:
      centroids = f["centroids"]
    z = self._per_example("embed", self.family.embed, x)
    q = np.asarray(losses.soft_assign(jnp.asarray(z), jnp.asarray(centroids)))
    return q.argmax(axis=1).astype(np.int32), q.max(axis=1)

  def sample(self, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """n generated examples in the data's units (uint8 images, or raw columns) and their
    classes: conditional GANs draw n per class (labels [n * K]), others None."""
    if n < 1:
      raise UsageError(f"--samples must be a positive number, got {n}")
    family, mesh = self.family, self.exp.mesh
    bs = self.exp.ctx.batch_size
    if family.has_samples:
      per_class = getattr(family, "num_classes", None)
      total = n * per_class if per_class else n
      key = jax.random.key(seed)
      if "sample" not in self._jitted:
        repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
        self._jitted["sample"] = jax.jit(
          lambda s, k, start: family.samples_from_noise(s, family.sample_noise(k, start, bs)),
          in_shardings=(repl, repl, None),
          out_shardings=sharded,
        )
      out = []
      for i in range(-(-total // bs)):
        x = self._jitted["sample"](self.state, jax.random.fold_in(key, i), i * bs)
        out.append(np.asarray(multihost_utils.process_allgather(x, tiled=True)))
      x = np.concatenate(out)[:total]
      labels = (np.arange(total) % per_class).astype(np.int32) if per_class else None
      return self._stored(x, model_units=False), labels
    if hasattr(family, "decode") and hasattr(family, "mean_image"):  # VAEs: the prior
      z = jax.random.normal(jax.random.key(seed), (n, self.cfg.latent_dim))
      x = np.asarray(
        jax.jit(lambda s, z: family.mean_image(family.decode(s.params, z)))(self.state, z)
      )
      return self._stored(x, model_units=True), None
    raise UsageError(f"--model={self.cfg.model} draws no samples")

  def _stored(self, x: np.ndarray, *, model_units: bool) -> np.ndarray:
    """Generated examples as the data stores them: uint8 images, raw table columns."""
    if not self.dataset.is_image:
      return self._to_data_units(x)
    unit = self._to_data_units(x) if model_units else np.clip(x, 0.0, 1.0)
    return np.round(unit * 255).astype(np.uint8)


def load_run(workdir: str, **overrides: Any) -> Run:
  """The run trained in `workdir` (its best checkpoint if it kept one, else its latest;
  `checkpoint="latest"` or a step in `overrides` chooses another), ready for new data."""
  return Run(*experiment.restore_trained(workdir, **overrides))


def read_inputs(spec: str, run: Run) -> np.ndarray:
  """Every row of an input --dataset form (a table, an npz, an image folder), unsplit, in the
  data's own units: a table's columns matched by name to the run's training columns."""
  pre = run.dataset.preprocessing
  return data.read_rows(
    spec, columns=None if pre is None else pre.columns, label_column=run.cfg.label_column
  )
