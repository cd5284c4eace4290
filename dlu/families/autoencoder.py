"""The autoencoder family: seed MLP, deeper MLP and convolutional, plain or denoising."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import flags

from dlu import losses
from dlu.errors import UsageError
from dlu.families.base import SingleNetworkFamily, paired_rows, register, to_unit
from dlu.models import autoencoder as ae_models

flags.DEFINE_integer("hidden_units", 128, "ae_seed: width of the one hidden (code) layer.")
flags.DEFINE_list("widths", ["512", "256"], "ae_mlp, vae: encoder widths (the decoder mirrors them).")
flags.DEFINE_list("conv_channels", ["32", "64"], "ae_conv, conv_vae: channels of the strided conv layers.")
flags.DEFINE_integer("latent_dim", 32, "Size of the code (ae_mlp, ae_conv and later families).")
flags.DEFINE_enum("recon_loss", "mse", ["mse", "bce"],
                  "mse: linear output, squared error; bce: sigmoid output, binary cross-entropy.")
flags.DEFINE_enum("noise", "none", ["none", "gaussian", "masking"],
                  "Denoising autoencoder: corrupt the training inputs with this noise.")
flags.DEFINE_float("noise_level", 0.0, "Noise stddev (gaussian) or drop probability (masking).")


def int_list(cfg_value, flag: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in cfg_value)
  except (TypeError, ValueError):
    raise UsageError(f"--{flag} must be a comma-separated list of positive integers, "
                     f"got {cfg_value!r}") from None
  if not values or min(values) < 1:
    raise UsageError(f"--{flag} must be a comma-separated list of positive integers, "
                     f"got {cfg_value!r}")
  return values


def conv_channels(cfg, shape: tuple[int, int, int]) -> tuple[int, ...]:
  """--conv_channels, checked against the image: each strided layer halves height and width."""
  channels = int_list(cfg.conv_channels, "conv_channels")
  if not ae_models.conv_compatible(shape, len(channels)):
    raise UsageError(f"--model={cfg.model} with {len(channels)} strided layers (--conv_channels) "
                     f"needs image height and width divisible by {2 ** len(channels)}; "
                     f"the data has {shape[0]}x{shape[1]}")
  return channels


@register
class Autoencoder(SingleNetworkFamily):
  models = ("ae_seed", "ae_mlp", "ae_conv")

  @classmethod
  def validate(cls, cfg):
    if cfg.model == "ae_seed" and cfg.hidden_units < 1:
      raise UsageError(f"--hidden_units must be a positive integer, got {cfg.hidden_units!r}")
    if cfg.latent_dim < 1:
      raise UsageError(f"--latent_dim must be a positive integer, got {cfg.latent_dim!r}")
    if cfg.model == "ae_mlp":
      int_list(cfg.widths, "widths")
    if cfg.model == "ae_conv":
      int_list(cfg.conv_channels, "conv_channels")
    if cfg.recon_loss == "bce" and cfg.pixel_range != "unit":
      raise UsageError("--recon_loss=bce needs --pixel_range=unit (targets in [0, 1])")
    if cfg.noise != "none" and not cfg.noise_level > 0:
      raise UsageError(f"--noise={cfg.noise} needs --noise_level > 0, got {cfg.noise_level!r}")
    if cfg.noise == "masking" and not cfg.noise_level < 1:
      raise UsageError(f"--noise_level is a drop probability for masking: must be < 1, "
                       f"got {cfg.noise_level!r}")

  def make_model(self):
    cfg, shape = self.cfg, self.spec.image_shape
    if cfg.model == "ae_seed":
      return ae_models.MLPAutoencoder(shape, encoder_widths=(), latent_dim=cfg.hidden_units,
                                      latent_activation="relu")
    if cfg.model == "ae_mlp":
      return ae_models.MLPAutoencoder(shape, encoder_widths=int_list(cfg.widths, "widths"),
                                      latent_dim=cfg.latent_dim)
    return ae_models.ConvAutoencoder(shape, channels=conv_channels(cfg, shape),
                                     latent_dim=cfg.latent_dim)

  def corrupt(self, x: jax.Array, rng: jax.Array) -> jax.Array:
    level = self.cfg.noise_level
    if self.cfg.noise == "gaussian":
      return x + level * jax.random.normal(rng, x.shape, x.dtype)
    if self.cfg.noise == "masking":
      return x * jax.random.bernoulli(rng, 1.0 - level, x.shape).astype(x.dtype)
    return x

  def reconstruction_error(self, output: jax.Array, target: jax.Array) -> jax.Array:
    if self.cfg.recon_loss == "bce":
      return losses.binary_cross_entropy_with_logits(output, target)
    return losses.mse(output, target)

  def reconstruct(self, params, x: jax.Array) -> jax.Array:
    """Reconstructions in pixel space. [B, H, W, C]"""
    out = self.model.apply({"params": params}, x)
    return jax.nn.sigmoid(out) if self.cfg.recon_loss == "bce" else out

  def loss(self, params, batch, rng):
    x = self.normalize(batch["image"])
    out = self.model.apply({"params": params}, self.corrupt(x, rng))
    return jnp.mean(self.reconstruction_error(out, x)), {}

  def eval_metrics(self, state, batch, rng):
    x = self.normalize(batch["image"])
    out = self.model.apply({"params": state.params}, x)
    recon = jax.nn.sigmoid(out) if self.cfg.recon_loss == "bce" else out
    low = -1.0 if self.spec.pixel_range == "symmetric" else 0.0
    metrics = {"mse": losses.mse(recon, x), "psnr": losses.psnr(recon, x, low=low, high=1.0)}
    if self.cfg.recon_loss == "bce":
      metrics["bce"] = losses.binary_cross_entropy_with_logits(out, x)
    return metrics

  def images(self, state, batch, rng):
    x = self.normalize(batch["image"])
    recon = self.reconstruct(state.params, x)
    unit = lambda v: to_unit(v, self.spec.pixel_range)
    return {"reconstructions": paired_rows(unit(x), unit(recon))}

  def embed(self, state, images):
    return self.model.apply({"params": state.params}, self.normalize(images), method="encode")
