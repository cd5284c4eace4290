"""Augmentation-invariant representations by contrast of random views (SimCLR).

Each step draws two random views of every image (`dlu.ops.views`: random resized crops, left-right
flips), encodes both, and trains the encoder and a projection head so that each view picks
out its partner among all views of the global batch (`losses.nt_xent`). No labels are used.
`embed` is the encoder's representation, L2-normalised (the loss compares directions), which
experiments.evaluate clusters; with `--manifold=umap --cluster_on=gmm` as in N2D.

With `--cluster_head` the run also learns the clusters themselves, as contrastive
clustering (CC, Li et al., AAAI 2021) does: a softmax head over K clusters (`--n_clusters`,
default the number of classes) on the representation, trained beside NT-Xent so that the two
views of an image get the same assignment (`losses.cluster_contrast`: contrast of the K
columns over the batch, plus an entropy term keeping every cluster in use).
experiments.evaluate then scores the head's argmax, with the k-means/UMAP pipeline on the
representation kept as a baseline.

Logged: `loss` (NT-Xent, plus the cluster loss with a head) and `top1`, the fraction of
views whose partner is their nearest view; with a head `cluster_loss` and `cluster_entropy`
(entropy of the batch's average assignment, log K when all clusters are used evenly). Eval
metrics are the same on two views of the test images drawn from the run's fixed eval key,
so every eval scores the same views; with a head and labels, eval rows also carry the
head's `acc`, `nmi` and `ari` on the test split (labels only score).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from dlu import data
from dlu.config import require_above_zero, require_fraction, require_non_negative, require_positive
from dlu.config.model_flags import conv_channels, int_list, num_clusters
from dlu.errors import UsageError
from dlu.families.base import SingleNetworkFamily, register
from dlu.metrics import clustering
from dlu.models.contrastive import ContrastiveNet
from dlu.ops import losses, views
from dlu.ops.grids import paired_rows, to_unit
from dlu.runtime import batched_eval, parallel

flags.DEFINE_float("temperature", 0.5, "simclr_*: temperature of the NT-Xent loss.")
flags.DEFINE_list(
  "projection_dims", ["256", "128"], "simclr_*: widths of the projection head (the loss's space)."
)
flags.DEFINE_float(
  "crop_min_scale",
  0.5,
  "simclr_*: smallest area fraction of a random crop "
  "(1: crops keep the whole area, only the aspect ratio varies).",
)
flags.DEFINE_boolean("hflip", True, "simclr_*: flip views left-right with probability 1/2.")
flags.DEFINE_float(
  "brightness",
  0.0,
  "simclr_*: views' intensities are multiplied by a random "
  "factor in [1 - brightness, 1 + brightness] (clipped to the pixel range).",
)
flags.DEFINE_float(
  "intensity_gamma",
  0.0,
  "simclr_*: views' intensities (in [0, 1]) are "
  "raised to a random power in [exp(-gamma), exp(gamma)].",
)
flags.DEFINE_boolean(
  "cluster_head",
  False,
  "simclr_*: also learn a clustering: a softmax head "
  "over --n_clusters clusters trained by contrastive clustering's cluster "
  "loss; experiments.evaluate scores its assignments.",
)
flags.DEFINE_float(
  "corruption_rate",
  0.6,
  "simclr_mlp on vectors: fraction of each row's features replaced by draws from their "
  "marginals (SCARF views).",
)
flags.DEFINE_float(
  "feature_noise", 0.0, "simclr_mlp on vectors: std of Gaussian noise added to the views."
)
flags.DEFINE_float(
  "cluster_temperature",
  1.0,
  "simclr_* --cluster_head: temperature of the contrast between clusters.",
)


@register
class SimCLR(SingleNetworkFamily):
  models = ("simclr_mlp", "simclr_conv")
  progress_keys = ("loss", "top1")
  loss_needs_axis = True  # Negatives come from the whole global batch.

  @classmethod
  def validate(cls, cfg):
    require_positive(cfg, "latent_dim")
    int_list(cfg.projection_dims, "projection_dims")
    encoder_flag = "widths" if cfg.model == "simclr_mlp" else "conv_channels"
    int_list(getattr(cfg, encoder_flag), encoder_flag)
    require_above_zero(cfg, "temperature", "cluster_temperature")
    if not 0 < cfg.crop_min_scale <= 1:
      raise UsageError(
        f"--crop_min_scale is an area fraction in (0, 1], got {cfg.crop_min_scale!r}"
      )
    require_fraction(cfg, "brightness", "corruption_rate")
    require_non_negative(cfg, "intensity_gamma", "feature_noise")
    if cfg.batch_size < 2:
      raise UsageError(
        f"simclr needs other images in the batch: --batch_size >= 2, got {cfg.batch_size}"
      )

  @property
  def num_clusters(self) -> int:
    """K of the cluster head (0 without one)."""
    if not self.cfg.cluster_head:
      return 0
    if not (self.cfg.n_clusters or self.spec.num_classes):
      raise UsageError(
        "--cluster_head needs --n_clusters: the data has no labels to count classes from"
      )
    return num_clusters(self.cfg, self.spec.num_classes)

  def __init__(self, cfg, spec):
    super().__init__(cfg, spec)
    if cfg.model == "simclr_conv":
      spec.require_images(cfg.model, instead="simclr_mlp")

  def make_model(self):
    cfg, shape = self.cfg, self.spec.example_shape
    common = dict(
      feature_dim=cfg.latent_dim,
      num_clusters=self.num_clusters,
      projection=int_list(cfg.projection_dims, "projection_dims"),
      kernel_init=self.kernel_init,
      dtype=self.compute_dtype,
    )
    if cfg.model == "simclr_conv":
      return ContrastiveNet("conv", channels=conv_channels(cfg, shape), **common)
    return ContrastiveNet("mlp", widths=int_list(cfg.widths, "widths"), **common)

  def two_views(self, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two independent random views of each normalised image (crops, flips, intensity
    jitter) or table row (SCARF feature corruption). [B, ...] each"""
    cfg = self.cfg
    k1, k2 = jax.random.split(rng)
    if not self.spec.is_image:
      draw = lambda key: views.corrupt_features(
        key, images, rate=cfg.corruption_rate, noise_std=cfg.feature_noise
      )
      return draw(k1), draw(k2)
    x = data.normalize(images, "unit")
    draw = lambda key: self.normalize(
      views.random_views(
        key,
        x,
        min_scale=cfg.crop_min_scale,
        hflip=cfg.hflip,
        brightness=cfg.brightness,
        gamma=cfg.intensity_gamma,
      )
    )
    return draw(k1), draw(k2)

  def contrast(self, params, images, rng, axis_name=None) -> dict[str, jax.Array]:
    """NT-Xent `loss` and partner-found-first `top1` of each of the 2B views [2B], and with a
    cluster head the views' cluster probabilities `probs` [2B, K]."""
    v1, v2 = self.two_views(images, rng)
    n = v1.shape[0]
    _, z, logits = self.model.apply({"params": params}, jnp.concatenate([v1, v2]))  # 2B views.
    loss, top1 = losses.nt_xent(z[:n], z[n:], temperature=self.cfg.temperature, axis_name=axis_name)
    out = {"loss": loss, "top1": top1}
    if logits is not None:
      out["probs"] = jax.nn.softmax(logits)
    return out

  def loss(self, params, batch, rng, *, axis_name=None):
    out = self.contrast(params, batch["image"], rng, axis_name)
    loss, metrics = jnp.mean(out["loss"]), {"top1": jnp.mean(out["top1"])}
    if "probs" in out:
      n = batch["image"].shape[0]
      cluster_loss, entropy = losses.cluster_contrast(
        out["probs"][:n],
        out["probs"][n:],
        temperature=self.cfg.cluster_temperature,
        axis_name=axis_name,
      )
      loss = loss + cluster_loss
      metrics.update(cluster_loss=cluster_loss, cluster_entropy=entropy)
    return loss, metrics

  def eval_metrics(self, state, batch, rng):
    out = self.contrast(state.params, batch["image"], rng)
    n = batch["image"].shape[0]
    halves = lambda v: (v[:n] + v[n:]) / 2
    metrics = {"loss": halves(out["loss"]), "top1": halves(out["top1"])}
    if "probs" in out:  # How sure the head is, and whether both views land in one cluster.
      hard = jnp.argmax(out["probs"], axis=-1)
      metrics.update(
        confidence=halves(jnp.max(out["probs"], axis=-1)),
        views_agree=(hard[:n] == hard[n:]).astype(jnp.float32),
      )
    return metrics

  def images(self, state, batch, rng):
    v1, v2 = self.two_views(batch["image"], rng)
    unit = lambda v: to_unit(v, self.spec.pixel_range)
    return {"views": paired_rows(unit(v1), unit(v2))}

  def embed(self, state, images):
    h = self.model.apply({"params": state.params}, self.normalize(images), method="encode")
    return losses.l2_normalize(h)

  def cluster_probs(self, state, images: jax.Array) -> jax.Array:
    """The cluster head's probabilities for whole images. [B, K]"""
    logits = self.model.apply(
      {"params": state.params}, self.normalize(images), method="cluster_logits"
    )
    return jax.nn.softmax(logits)

  # --- Host-side hooks.
  def prepare(self, dataset, ctx):
    self._probs = parallel.jit_over_images(self.cluster_probs, ctx.mesh)
    self._ctx = ctx

  @property
  def assignments(self):
    """With a cluster head, (state, x) -> soft [N, K] and hard [N] assignments of the rows of
    `x`, which experiments.evaluate scores; None without one (it clusters embeddings)."""
    if not self.cfg.cluster_head:
      return None

    def assign(state, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
      return batched_eval.cluster_assignments(
        self._probs, state, x, mesh=self._ctx.mesh, batch_size=self._ctx.batch_size
      )

    return assign

  def split_metrics(self, state, dataset, ctx):
    if not self.cfg.cluster_head or dataset.y_test is None:
      return {}
    _, assign = self.assignments(state, dataset.x_test)
    return clustering.scores(dataset.y_test, assign)
