"""The autoencoder family: seed MLP, deeper MLP and convolutional, plain or denoising."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import flags

from dlu.config import require_positive
from dlu.config.model_flags import conv_channels, int_list
from dlu.errors import UsageError
from dlu.families.base import SingleNetworkFamily, register
from dlu.models import autoencoder as ae_models
from dlu.ops import losses
from dlu.ops.grids import paired_rows, to_unit

flags.DEFINE_integer("hidden_units", 128, "ae_seed: width of the one hidden (code) layer.")
flags.DEFINE_enum(
  "recon_loss",
  "mse",
  ["mse", "bce"],
  "mse: linear output, squared error; bce: sigmoid output, binary cross-entropy.",
)
flags.DEFINE_enum(
  "noise",
  "none",
  ["none", "gaussian", "masking"],
  "Denoising autoencoder: corrupt the training inputs with this noise.",
)
flags.DEFINE_float("noise_level", 0.0, "Noise stddev (gaussian) or drop probability (masking).")


@register
class Autoencoder(SingleNetworkFamily):
  models = ("ae_seed", "ae_mlp", "ae_conv")

  @classmethod
  def validate(cls, cfg):
    if cfg.model == "ae_seed":
      require_positive(cfg, "hidden_units")
    require_positive(cfg, "latent_dim")
    if cfg.model == "ae_mlp":
      int_list(cfg.widths, "widths")
    if cfg.model == "ae_conv":
      int_list(cfg.conv_channels, "conv_channels")
    if cfg.recon_loss == "bce" and cfg.pixel_range != "unit":
      raise UsageError("--recon_loss=bce needs --pixel_range=unit (targets in [0, 1])")
    if cfg.noise != "none" and not cfg.noise_level > 0:
      raise UsageError(f"--noise={cfg.noise} needs --noise_level > 0, got {cfg.noise_level!r}")
    if cfg.noise == "masking" and not cfg.noise_level < 1:
      raise UsageError(
        f"--noise_level is a drop probability for masking: must be < 1, got {cfg.noise_level!r}"
      )

  def __init__(self, cfg, spec):
    super().__init__(cfg, spec)
    if cfg.model == "ae_conv":
      spec.require_images(cfg.model, instead="ae_mlp")
    if cfg.recon_loss == "bce" and not spec.is_image:
      raise UsageError(
        "--recon_loss=bce needs targets in [0, 1]; vectors are scaled by --feature_scaling: "
        "use --recon_loss=mse"
      )

  def make_model(self):
    cfg, shape = self.cfg, self.spec.example_shape
    if cfg.model == "ae_seed":
      return ae_models.MLPAutoencoder(
        shape,
        encoder_widths=(),
        latent_dim=cfg.hidden_units,
        latent_activation="relu",
        dropout=cfg.dropout,
        kernel_init=self.kernel_init,
        dtype=self.compute_dtype,
      )
    if cfg.model == "ae_mlp":
      return ae_models.MLPAutoencoder(
        shape,
        encoder_widths=int_list(cfg.widths, "widths"),
        latent_dim=cfg.latent_dim,
        dropout=cfg.dropout,
        kernel_init=self.kernel_init,
        dtype=self.compute_dtype,
      )
    return ae_models.ConvAutoencoder(
      shape,
      channels=conv_channels(cfg, shape),
      latent_dim=cfg.latent_dim,
      dropout=cfg.dropout,
      kernel_init=self.kernel_init,
      dtype=self.compute_dtype,
    )

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

  # --- The code and its decoding as functions of the parameters (DEC and IDEC use them).

  def code(self, params, images: jax.Array) -> jax.Array:
    """The codes of stored inputs. [B, D]"""
    return self.model.apply({"params": params}, self.normalize(images), method="encode")

  def code_error(self, params, z: jax.Array, images: jax.Array) -> jax.Array:
    """The training loss of decoding codes `z` [B, D] against the inputs they came from. [B]"""
    out = self.model.apply({"params": params}, z, method="decode")
    return self.reconstruction_error(out, self.normalize(images))

  def code_mse(self, params, z: jax.Array, images: jax.Array) -> jax.Array:
    """The squared error of decoding codes `z` [B, D], in the model's units. [B]"""
    out = self.model.apply({"params": params}, z, method="decode")
    recon = jax.nn.sigmoid(out) if self.cfg.recon_loss == "bce" else out
    return losses.mse(recon, self.normalize(images))

  def reconstruct(self, state, images: jax.Array) -> jax.Array:
    """Reconstructions of stored inputs, in the model's units. [B, ...]"""
    out = self.model.apply({"params": state.params}, self.normalize(images))
    return jax.nn.sigmoid(out) if self.cfg.recon_loss == "bce" else out

  def score(self, state, images: jax.Array) -> jax.Array:
    """Anomaly score: the squared reconstruction error, in the model's units (also under
    --recon_loss=bce, whose value on grey pixels is mostly their own entropy, which tracks how
    much ink an image has rather than how well it is reconstructed). [B]"""
    return losses.mse(self.reconstruct(state, images), self.normalize(images))

  def loss(self, params, batch, rng):
    x = self.normalize(batch["image"])
    # Dropout draws from its own stream, so the corruption noise is the same with or without it.
    rngs = {"dropout": jax.random.fold_in(rng, 1)} if self.cfg.dropout else {}
    out = self.model.apply({"params": params}, self.corrupt(x, rng), rngs=rngs)
    return jnp.mean(self.reconstruction_error(out, x)), {}

  def eval_metrics(self, state, batch, rng):
    x = self.normalize(batch["image"])
    out = self.model.apply({"params": state.params}, x)
    recon = jax.nn.sigmoid(out) if self.cfg.recon_loss == "bce" else out
    metrics = {"mse": losses.mse(recon, x)}
    if self.spec.is_image:
      low = -1.0 if self.spec.pixel_range == "symmetric" else 0.0
      metrics["psnr"] = losses.psnr(recon, x, low=low, high=1.0)
    if self.cfg.recon_loss == "bce":
      metrics["bce"] = losses.binary_cross_entropy_with_logits(out, x)
    return metrics

  def images(self, state, batch, rng):
    x = self.normalize(batch["image"])
    recon = self.reconstruct(state, batch["image"])
    unit = lambda v: to_unit(v, self.spec.pixel_range)
    return {"reconstructions": paired_rows(unit(x), unit(recon))}

  def embed(self, state, images):
    return self.code(state.params, images)
