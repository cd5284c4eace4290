"""GEOM (Golan & El-Yaniv 2018): a classifier learns which of K geometric transformations was
applied to a normal image; an image whose transformations it cannot tell apart is anomalous.

The K = 8 transformations are the 4 rotations by multiples of 90 degrees, each with and without
a horizontal flip (square images). Every training image is seen under all K; the score is minus
the mean over the K transformations of the log-probability of the right one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dlu.config.model_flags import conv_channels
from dlu.errors import UsageError
from dlu.families.base import SingleNetworkFamily, register
from dlu.models import autoencoder as ae_models

#: The number of transformations: 4 rotations x 2 flips.
NUM_TRANSFORMS = 8


def all_transforms(x: jax.Array) -> jax.Array:
  """Every image of `x` [B, H, W, C] under each transformation, transformation-major:
  [K * B, H, W, C], transformation t = 4 * flip + rotation."""
  views = []
  for flip in (False, True):
    base = x[:, :, ::-1] if flip else x
    for rot in range(4):
      views.append(jnp.rot90(base, k=rot, axes=(1, 2)))
  return jnp.concatenate(views)


def transform_labels(batch_size: int) -> jax.Array:
  """The transformation of each row of `all_transforms`. [K * B]"""
  return jnp.repeat(jnp.arange(NUM_TRANSFORMS), batch_size)


@register
class Geom(SingleNetworkFamily):
  models = ("geom_conv",)

  def __init__(self, cfg, spec):
    super().__init__(cfg, spec)
    spec.require_images(cfg.model)
    h, w, _ = spec.example_shape
    if h != w:
      raise UsageError(
        f"--model=geom_conv rotates images by 90 degrees: needs square ones, not {h}x{w}"
      )

  def make_model(self):
    return ae_models.ConvEncoder(
      channels=conv_channels(self.cfg, self.spec.example_shape),
      out_dim=NUM_TRANSFORMS,
      kernel_init=self.kernel_init,
      dtype=self.compute_dtype,
    )

  def log_probs(self, params, images: jax.Array) -> jax.Array:
    """log p(t | T_t x) of the right transformation, per image and transformation. [K, B]"""
    b = images.shape[0]
    logits = self.model.apply({"params": params}, all_transforms(self.normalize(images)))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))  # [K * B, K]
    right = jnp.take_along_axis(logp, transform_labels(b)[:, None], axis=1)[:, 0]
    return right.reshape(NUM_TRANSFORMS, b)

  def loss(self, params, batch, rng):
    return -jnp.mean(self.log_probs(params, batch["image"])), {}

  def eval_metrics(self, state, batch, rng):
    images = batch["image"]
    b = images.shape[0]
    logits = self.model.apply({"params": state.params}, all_transforms(self.normalize(images)))
    labels = transform_labels(b)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {
      "xent": xent.reshape(NUM_TRANSFORMS, b).mean(axis=0),
      "transform_acc": correct.reshape(NUM_TRANSFORMS, b).mean(axis=0),
    }

  def score(self, state, images):
    """Minus the mean log-probability of the right transformation over all K. [B]"""
    return -jnp.mean(self.log_probs(state.params, images), axis=0)
