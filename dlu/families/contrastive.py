"""Augmentation-invariant representations by contrast of random views (SimCLR).

Each step draws two random views of every image (`dlu.views`: random resized crops, left-right
flips), encodes both, and trains the encoder and a projection head so that each view picks
out its partner among all views of the global batch (`losses.nt_xent`). No labels are used.
`embed` is the encoder's representation, L2-normalised (the loss compares directions), which
experiments.evaluate clusters; with `--manifold=umap --cluster_on=gmm` as in N2D.

Logged: `loss` (NT-Xent) and `top1`, the fraction of views whose partner is their nearest
view; eval metrics are the same on two views of the test images drawn from the run's fixed
eval key, so every eval scores the same views.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import flags

from dlu import losses, views
from dlu.errors import UsageError
from dlu.families.autoencoder import conv_channels, int_list
from dlu.families.base import SingleNetworkFamily, paired_rows, register, to_unit
from dlu.models.contrastive import ContrastiveNet

flags.DEFINE_float("temperature", 0.5, "simclr_*: temperature of the NT-Xent loss.")
flags.DEFINE_list("projection_dims", ["256", "128"],
                  "simclr_*: widths of the projection head (the loss's space).")
flags.DEFINE_float("crop_min_scale", 0.5, "simclr_*: smallest area fraction of a random crop "
                   "(1: crops keep the whole area, only the aspect ratio varies).")
flags.DEFINE_boolean("hflip", True, "simclr_*: flip views left-right with probability 1/2.")


@register
class SimCLR(SingleNetworkFamily):
  models = ("simclr_mlp", "simclr_conv")
  progress_keys = ("loss", "top1")
  loss_needs_axis = True  # Negatives come from the whole global batch.

  @classmethod
  def validate(cls, cfg):
    if cfg.latent_dim < 1:
      raise UsageError(f"--latent_dim must be a positive integer, got {cfg.latent_dim!r}")
    int_list(cfg.projection_dims, "projection_dims")
    encoder_flag = "widths" if cfg.model == "simclr_mlp" else "conv_channels"
    int_list(getattr(cfg, encoder_flag), encoder_flag)
    if not cfg.temperature > 0:
      raise UsageError(f"--temperature must be > 0, got {cfg.temperature!r}")
    if not 0 < cfg.crop_min_scale <= 1:
      raise UsageError(f"--crop_min_scale is an area fraction in (0, 1], got {cfg.crop_min_scale!r}")
    if cfg.batch_size < 2:
      raise UsageError(f"simclr needs other images in the batch: --batch_size >= 2, "
                       f"got {cfg.batch_size}")

  def make_model(self):
    cfg, shape = self.cfg, self.spec.image_shape
    if cfg.model == "simclr_conv":
      return ContrastiveNet("conv", channels=conv_channels(cfg, shape), feature_dim=cfg.latent_dim,
                            projection=int_list(cfg.projection_dims, "projection_dims"))
    return ContrastiveNet("mlp", widths=int_list(cfg.widths, "widths"), feature_dim=cfg.latent_dim,
                          projection=int_list(cfg.projection_dims, "projection_dims"))

  def two_views(self, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two independent random views of each normalised image. [B, H, W, C] each"""
    x = self.normalize(images)
    draw = lambda key: views.random_views(key, x, min_scale=self.cfg.crop_min_scale,
                                          hflip=self.cfg.hflip)
    k1, k2 = jax.random.split(rng)
    return draw(k1), draw(k2)

  def contrast(self, params, images, rng, axis_name=None) -> tuple[jax.Array, jax.Array]:
    """NT-Xent and partner-found-first of each of the 2B views. [2B] each"""
    v1, v2 = self.two_views(images, rng)
    n = v1.shape[0]
    _, z = self.model.apply({"params": params}, jnp.concatenate([v1, v2]))  # One pass, 2B views.
    return losses.nt_xent(z[:n], z[n:], temperature=self.cfg.temperature, axis_name=axis_name)

  def loss(self, params, batch, rng, *, axis_name=None):
    loss, top1 = self.contrast(params, batch["image"], rng, axis_name)
    return jnp.mean(loss), {"top1": jnp.mean(top1)}

  def eval_metrics(self, state, batch, rng):
    loss, top1 = self.contrast(state.params, batch["image"], rng)
    n = batch["image"].shape[0]
    return {"loss": (loss[:n] + loss[n:]) / 2, "top1": (top1[:n] + top1[n:]) / 2}

  def images(self, state, batch, rng):
    v1, v2 = self.two_views(batch["image"], rng)
    unit = lambda v: to_unit(v, self.spec.pixel_range)
    return {"views": paired_rows(unit(v1), unit(v2))}

  def embed(self, state, images):
    h = self.model.apply({"params": state.params}, self.normalize(images), method="encode")
    return h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
