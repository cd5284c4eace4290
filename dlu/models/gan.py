"""GAN generators and discriminators: DCGAN-style convolutional and MLP.

Generators map noise [B, latent_dim] to images [B, H, W, C] through `tanh`
(pixels in [-1, 1]) or `sigmoid` ([0, 1]), and normalise their hidden layers with
BatchNorm: `train=True` uses (and updates running averages from) the batch's
statistics, `train=False` the running averages. Under `jax.pmap` the batch
statistics are averaged over `axis_name`, so they are those of the global batch,
as they already are under `jax.jit` over a sharded batch.

Discriminators return one logit per image and have no BatchNorm: the gradient
penalties need each example's score to depend on that example only.

With `num_classes` set, both are class-conditional: the generator concatenates a
learned embedding of the label to the noise, and the discriminator is a projection
discriminator (Miyato & Koyama 2018), logit = linear(phi(x)) + <embed(y), phi(x)>,
phi its penultimate features. Without it they are the unconditional networks,
parameter for parameter.

`kernel_init` names the initializer of every Dense and conv kernel (a key of
`layers.KERNEL_INITS`); the label embeddings keep their own. `dtype` is the compute dtype
(see `layers`): images, logits and features come back in float32, BatchNorm keeps float32
statistics and running averages, and the projection term is summed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dlu.models.layers import Conv, ConvTranspose, kernel_init, to_compute, to_float32

OUTPUT_ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": nn.sigmoid, "linear": lambda x: x}
KERNEL = (4, 4)  # DCGAN's stride-2 kernels: 4x4 divides evenly into the 2x upsampling


def dcgan_compatible(image_shape: Sequence[int]) -> bool:
  """The DCGAN pair halves (doubles) the image twice: H and W must divide by 4."""
  return image_shape[0] % 4 == 0 and image_shape[1] % 4 == 0


def _with_label(
  z: jax.Array, labels: jax.Array | None, num_classes: int | None, dtype: Any = jnp.float32
) -> jax.Array:
  """The noise, and the label's embedding (of the noise's width) beside it, in `dtype`.
  [B, L or 2L]"""
  z = to_compute(z, dtype)
  if num_classes is None:
    return z
  if labels is None:
    raise ValueError("a class-conditional generator needs labels")
  chex.assert_shape(labels, (z.shape[0],))
  embed = nn.Embed(num_classes, z.shape[-1], dtype=dtype, name="label_embed")
  return jnp.concatenate([z, embed(labels)], -1)


def _projection(features: jax.Array, labels: jax.Array | None, num_classes: int) -> jax.Array:
  """<embed(y), phi(x)>, the class term of a projection discriminator's logit.

  The embedding starts at the scale of a Dense kernel over the features (std 1/sqrt(D)),
  so the class term starts as small as the linear one. Float32 whatever the features' dtype
  (a sum over D features, part of the logit). [B]
  """
  if labels is None:
    raise ValueError("a projection discriminator needs labels")
  chex.assert_shape(labels, features.shape[:1])
  embed = nn.Embed(
    num_classes,
    features.shape[-1],
    name="class_embed",
    embedding_init=nn.initializers.lecun_normal(in_axis=-1, out_axis=-2),
  )
  return jnp.sum(embed(labels) * to_float32(features), axis=-1)


def _batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm whose output is in `dtype`; its statistics, scale, bias and running averages
  stay float32 (flax reduces in float32)."""
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.9, axis_name=axis_name, dtype=dtype, name=name
  )


class DCGANGenerator(nn.Module):
  """Noise -> Dense to (H/4, W/4, 2c) -> BN, relu -> ConvT(c, s2) -> BN, relu -> ConvT(C, s2).

  28x28 starts at 7x7, 32x32 at 8x8, the 8x8 digits at 2x2. With `num_classes`, the
  label's embedding is concatenated to the noise.
  """

  image_shape: tuple[int, int, int]
  channels: int = 64
  output_activation: str = "tanh"
  axis_name: str | None = None
  num_classes: int | None = None
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, z: jax.Array, labels: jax.Array | None = None, *, train: bool = True
  ) -> jax.Array:
    h, w, c_out = self.image_shape
    b = z.shape[0]
    init, dtype = kernel_init(self.kernel_init), self.dtype
    z = _with_label(z, labels, self.num_classes, dtype)
    x = nn.Dense(
      (h // 4) * (w // 4) * 2 * self.channels,
      use_bias=False,
      kernel_init=init,
      dtype=dtype,
      name="dense",
    )(z)
    x = x.reshape((b, h // 4, w // 4, 2 * self.channels))  # [B, H/4, W/4, 2c]
    x = nn.relu(_batch_norm(train, self.axis_name, dtype, "bn_0")(x))
    x = ConvTranspose(
      self.channels,
      KERNEL,
      strides=(2, 2),
      padding="SAME",
      use_bias=False,
      kernel_init=init,
      dtype=dtype,
      name="deconv_0",
    )(x)  # [B, H/2, W/2, c]
    x = nn.relu(_batch_norm(train, self.axis_name, dtype, "bn_1")(x))
    x = ConvTranspose(
      c_out, KERNEL, strides=(2, 2), padding="SAME", kernel_init=init, dtype=dtype, name="deconv_1"
    )(x)
    chex.assert_shape(x, (b, h, w, c_out))
    return to_float32(OUTPUT_ACTIVATIONS[self.output_activation](x))  # [B, H, W, C]


class _Discriminator(nn.Module):
  """A critic's logit from its `embed` features, plus a projection term when conditional.

  Subclasses define `num_classes`, `embed` (float32 features) and a Dense(1) `logit` layer
  in `setup`.
  """

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    chex.assert_rank(x, {2, 4})
    features = self.embed(x)
    logit = to_float32(self.logit(features)[:, 0])  # [B]
    if self.num_classes is None:
      return logit
    return logit + _projection(features, labels, self.num_classes)


class DCGANDiscriminator(_Discriminator):
  """Image -> Conv(c, s2), leaky relu -> Conv(2c, s2), leaky relu -> Dense(1) (+ projection)."""

  channels: int = 64
  num_classes: int | None = None
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  def setup(self):
    init = kernel_init(self.kernel_init)
    self.convs = [
      Conv(
        c,
        KERNEL,
        strides=(2, 2),
        padding="SAME",
        kernel_init=init,
        dtype=self.dtype,
        name=f"conv_{i}",
      )
      for i, c in enumerate((self.channels, 2 * self.channels))
    ]
    self.logit = nn.Dense(1, kernel_init=init, dtype=self.dtype)

  def embed(self, x: jax.Array) -> jax.Array:
    """The penultimate layer, flattened, in float32. [B, (H/4) * (W/4) * 2c]"""
    x = to_compute(x, self.dtype)
    for conv in self.convs:
      x = nn.leaky_relu(conv(x), 0.2)
    return to_float32(x.reshape((x.shape[0], -1)))


class MLPGenerator(nn.Module):
  """Noise (and label embedding) -> Dense(width) -> BN, relu, ... -> Dense(H * W * C) -> image."""

  image_shape: tuple[int, int, int]
  widths: Sequence[int] = (256, 512)
  output_activation: str = "tanh"
  axis_name: str | None = None
  num_classes: int | None = None
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, z: jax.Array, labels: jax.Array | None = None, *, train: bool = True
  ) -> jax.Array:
    init, dtype = kernel_init(self.kernel_init), self.dtype
    x = _with_label(z, labels, self.num_classes, dtype)
    for i, width in enumerate(self.widths):
      x = nn.Dense(width, use_bias=False, kernel_init=init, dtype=dtype, name=f"dense_{i}")(x)
      x = nn.relu(_batch_norm(train, self.axis_name, dtype, f"bn_{i}")(x))
    x = nn.Dense(math.prod(self.image_shape), kernel_init=init, dtype=dtype, name="out")(x)
    x = x.reshape((z.shape[0],) + tuple(self.image_shape))  # [B, H, W, C]
    return to_float32(OUTPUT_ACTIVATIONS[self.output_activation](x))


class MLPDiscriminator(_Discriminator):
  """Flattened image or vector -> Dense(width), leaky relu, ... -> Dense(1) (+ projection)."""

  widths: Sequence[int] = (512, 256)
  num_classes: int | None = None
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  def setup(self):
    init, dtype = kernel_init(self.kernel_init), self.dtype
    self.hidden = [
      nn.Dense(width, kernel_init=init, dtype=dtype, name=f"dense_{i}")
      for i, width in enumerate(self.widths)
    ]
    self.logit = nn.Dense(1, kernel_init=init, dtype=dtype)

  def embed(self, x: jax.Array) -> jax.Array:
    """The last hidden layer, in float32. [B, widths[-1]]"""
    x = to_compute(x.reshape((x.shape[0], -1)), self.dtype)
    for dense in self.hidden:
      x = nn.leaky_relu(dense(x), 0.2)
    return to_float32(x)
