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
from dlu.ops import losses, tabular
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
flags.DEFINE_float(
  "hide_rate",
  0.25,
  "Tables with --impute=model (autoencoders, VAEs, gain): the share of observed cells hidden "
  "from the input at each training step, the loss still on them, so the model learns to fill a "
  "cell from the others (0: it only learns to copy what it sees).",
)


@register
class Autoencoder(SingleNetworkFamily):
  """Images, vectors and tables. On a table with column kinds or missing cells (`spec.columns`,
  `spec.masked`) the MLP reads the row with missing cells as 0 (and the mask beside it), and
  its loss is each column's own (dlu.ops.tabular) on the observed cells: squared error for
  numbers, cross-entropy for booleans and categories; its reconstruction is numbers,
  probabilities and level probabilities."""

  models = ("ae_seed", "ae_mlp", "ae_conv")
  takes_missing = True
  takes_embedded = True

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
    if not 0 <= cfg.hide_rate < 1:
      raise UsageError(f"--hide_rate is a share of cells: must be in [0, 1), got {cfg.hide_rate!r}")
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

  @property
  def tabular(self) -> bool:
    """Rows of a table with column kinds or missing cells (see the class docstring)."""
    return not self.spec.is_image and (bool(self.spec.columns) or self.spec.masked)

  def model_input(self, x: jax.Array) -> jax.Array:
    """What the network reads: tables' rows with missing cells as 0 (and the mask)."""
    return tabular.model_input(x, masked=self.spec.masked) if self.tabular else x

  def init_params(self, rng):
    dummy = jnp.zeros((1,) + self.spec.example_shape, jnp.float32)
    return self.model.init(rng, self.model_input(dummy))["params"]

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
        embedded=self.spec.embedded,
      )
    if cfg.model == "ae_mlp":
      return ae_models.MLPAutoencoder(
        shape,
        encoder_widths=int_list(cfg.widths, "widths"),
        latent_dim=cfg.latent_dim,
        dropout=cfg.dropout,
        kernel_init=self.kernel_init,
        dtype=self.compute_dtype,
        embedded=self.spec.embedded,
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
    """The training input's noise; on a table with missing cells, masking hides cells (makes
    them missing) rather than zeroing them."""
    level = self.cfg.noise_level
    if self.cfg.noise == "gaussian":
      return x + level * jax.random.normal(rng, x.shape, x.dtype)
    if self.cfg.noise == "masking":
      keep = jax.random.bernoulli(rng, 1.0 - level, x.shape)
      if self.tabular and self.spec.masked:
        return jnp.where(keep, x, jnp.nan)
      return x * keep.astype(x.dtype)
    return x

  def reconstruction_error(self, output: jax.Array, target: jax.Array) -> jax.Array:
    if self.cfg.recon_loss == "bce":
      return losses.binary_cross_entropy_with_logits(output, target)
    return losses.mse(output, target)

  # --- The code and its decoding as functions of the parameters (DEC and IDEC use them).

  def code(self, params, images: jax.Array) -> jax.Array:
    """The codes of stored inputs. [B, D]"""
    x = self.model_input(self.normalize(images))
    return self.model.apply({"params": params}, x, method="encode")

  def code_error(self, params, z: jax.Array, images: jax.Array) -> jax.Array:
    """The training loss of decoding codes `z` [B, D] against the inputs they came from. [B]"""
    out = self.model.apply({"params": params}, z, method="decode")
    if self.tabular:
      return tabular.row_loss(out, self.normalize(images), self.spec.columns)
    return self.reconstruction_error(out, self.normalize(images))

  def code_mse(self, params, z: jax.Array, images: jax.Array) -> jax.Array:
    """The squared error of decoding codes `z` [B, D], in the model's units. [B]"""
    out = self.model.apply({"params": params}, z, method="decode")
    recon = jax.nn.sigmoid(out) if self.cfg.recon_loss == "bce" else out
    return losses.mse(recon, self.normalize(images))

  def reconstruct(self, state, images: jax.Array) -> jax.Array:
    """Reconstructions of stored inputs, in the model's units (a table's categories and
    booleans as probabilities). [B, ...]"""
    x = self.normalize(images)
    out = self.model.apply({"params": state.params}, self.model_input(x))
    if self.tabular:
      return tabular.reconstruction(out, self.spec.columns)
    return jax.nn.sigmoid(out) if self.cfg.recon_loss == "bce" else out

  def score(self, state, images: jax.Array) -> jax.Array:
    """Anomaly score: the squared reconstruction error, in the model's units (also under
    --recon_loss=bce, whose value on grey pixels is mostly their own entropy, which tracks how
    much ink an image has rather than how well it is reconstructed); on a table, the mean of
    its columns' losses over the observed cells. [B]"""
    if self.tabular:
      x = self.normalize(images)
      out = self.model.apply({"params": state.params}, self.model_input(x))
      return tabular.row_loss(out, x, self.spec.columns)
    return losses.mse(self.reconstruct(state, images), self.normalize(images))

  def loss(self, params, batch, rng):
    x = self.normalize(batch["image"])
    # Dropout draws from its own stream, so the corruption noise is the same with or without it.
    rngs = {"dropout": jax.random.fold_in(rng, 1)} if self.cfg.dropout else {}
    if self.tabular:
      x_in = self.corrupt(x, rng)
      if self.spec.masked and self.cfg.hide_rate:
        x_in = tabular.hide(x_in, jax.random.fold_in(rng, 2), self.cfg.hide_rate, self.spec.columns)
      x_in = self.model_input(x_in)
      out = self.model.apply({"params": params}, x_in, rngs=rngs)
      return tabular.batch_loss(out, x, self.spec.columns), {}
    out = self.model.apply({"params": params}, self.corrupt(x, rng), rngs=rngs)
    return jnp.mean(self.reconstruction_error(out, x)), {}

  def eval_metrics(self, state, batch, rng):
    x = self.normalize(batch["image"])
    if self.tabular:
      out = self.model.apply({"params": state.params}, self.model_input(x))
      recon = tabular.reconstruction(out, self.spec.columns)
      seen = tabular.observed(x)
      sq = jnp.where(seen, jnp.square(recon - jnp.where(seen, x, 0.0)), 0.0)
      return {
        "mse": jnp.sum(sq, axis=-1) / jnp.maximum(jnp.sum(seen, axis=-1), 1),
        "recon_loss": tabular.row_loss(out, x, self.spec.columns),
      }
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
