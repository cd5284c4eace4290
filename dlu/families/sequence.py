"""Sequence autoencoders on time series (series:PATH): `ae_conv1d` (1-D convolutions over time)
and `ae_seq` (a GRU with a pooled code).

The autoencoder family's protocol (`embed`, `reconstruct`, `score`, denoising with --noise),
on inputs [B, T, C] whose NaN steps are missing or padding: the models read them as 0 beside a
mask, and the loss, the metrics and the anomaly score count observed steps only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import flags

from dlu.config import require_positive
from dlu.config.model_flags import int_list
from dlu.errors import UsageError
from dlu.families.autoencoder import Autoencoder
from dlu.families.base import register
from dlu.models import sequence as seq_models

flags.DEFINE_integer(
  "series_kernel_size",
  5,
  "ae_conv1d, vae_conv1d, simclr_conv1d: steps each 1-D convolution spans "
  "(--conv_channels: widths).",
)
flags.DEFINE_integer("seq_units", 64, "ae_seq, vae_seq: units of the encoder and decoder GRUs.")


def split_mask(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x with missing steps 0, mask 1 where observed) of a series batch with NaN steps."""
  mask = jnp.isfinite(x)
  return jnp.where(mask, x, 0.0), mask.astype(jnp.float32)


def masked_mse(prediction: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over each series' observed values. [B]"""
  axes = tuple(range(1, mask.ndim))
  err = jnp.sum(jnp.square(prediction - target) * mask, axis=axes)
  return err / jnp.maximum(jnp.sum(mask, axis=axes), 1.0)


@register
class SeriesAutoencoder(Autoencoder):
  models = ("ae_conv1d", "ae_seq")
  takes_series = True

  @classmethod
  def validate(cls, cfg):
    require_positive(cfg, "latent_dim")
    if cfg.model == "ae_conv1d":
      int_list(cfg.conv_channels, "conv_channels")
      require_positive(cfg, "series_kernel_size")
    else:
      require_positive(cfg, "seq_units")
    if cfg.recon_loss != "mse":
      raise UsageError(f"--model={cfg.model} reconstructs with --recon_loss=mse only")
    if cfg.noise != "none" and not cfg.noise_level > 0:
      raise UsageError(f"--noise={cfg.noise} needs --noise_level > 0, got {cfg.noise_level!r}")
    if cfg.noise == "masking" and not cfg.noise_level < 1:
      raise UsageError(
        f"--noise_level is a drop probability for masking: must be < 1, got {cfg.noise_level!r}"
      )

  def __init__(self, cfg, spec):
    if not spec.is_series:
      what = "images" if spec.is_image else "vectors"
      raise UsageError(
        f"--model={cfg.model} needs time series [T, C] (--dataset=series:PATH); the data are {what}"
      )
    super().__init__(cfg, spec)

  def make_model(self):
    cfg, shape = self.cfg, tuple(self.spec.example_shape)
    if cfg.model == "ae_conv1d":
      return seq_models.Conv1DAutoencoder(
        shape,
        channels=int_list(cfg.conv_channels, "conv_channels"),
        kernel_size=cfg.series_kernel_size,
        latent_dim=cfg.latent_dim,
        dropout=cfg.dropout,
        kernel_init=self.kernel_init,
        dtype=self.compute_dtype,
      )
    return seq_models.GRUAutoencoder(
      shape,
      units=cfg.seq_units,
      latent_dim=cfg.latent_dim,
      dropout=cfg.dropout,
      kernel_init=self.kernel_init,
      dtype=self.compute_dtype,
    )

  def init_params(self, rng):
    dummy = jnp.zeros((1,) + tuple(self.spec.example_shape), jnp.float32)
    return self.model.init(rng, dummy, dummy)["params"]

  def reconstruct(self, state, series: jax.Array) -> jax.Array:
    """Reconstructions at every step (missing ones included), in the model's units. [B, T, C]"""
    return self.model.apply({"params": state.params}, *split_mask(series))

  def score(self, state, series: jax.Array) -> jax.Array:
    """Anomaly score: the squared reconstruction error over the observed steps. [B]"""
    x, mask = split_mask(series)
    return masked_mse(self.model.apply({"params": state.params}, x, mask), x, mask)

  def step_scores(self, state, series: jax.Array) -> jax.Array:
    """Anomaly score per time step: squared error averaged over the observed channels (0
    where none is). [B, T]"""
    x, mask = split_mask(series)
    err = jnp.square(self.model.apply({"params": state.params}, x, mask) - x) * mask
    return jnp.sum(err, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)

  def loss(self, params, batch, rng):
    x, mask = split_mask(batch["image"])
    rngs = {"dropout": jax.random.fold_in(rng, 1)} if self.cfg.dropout else {}
    noisy = self.corrupt(x, rng) * mask
    if self.cfg.noise == "masking":  # dropped steps are shown to the encoder as missing
      mask_in = mask * (noisy != 0)
    else:
      mask_in = mask
    out = self.model.apply({"params": params}, noisy, mask_in, rngs=rngs)
    return jnp.mean(masked_mse(out, x, mask)), {}

  def eval_metrics(self, state, batch, rng):
    return {"mse": self.score(state, batch["image"])}

  def images(self, state, batch, rng):
    return {}

  def code(self, params, series):
    return self.model.apply({"params": params}, *split_mask(series), method="encode")

  def code_error(self, params, z, series):
    """Squared error of decoding `z` over the observed steps. [B]"""
    x, mask = split_mask(series)
    return masked_mse(self.model.apply({"params": params}, z, method="decode"), x, mask)

  code_mse = code_error

  def embed(self, state, series):
    return self.code(state.params, series)
