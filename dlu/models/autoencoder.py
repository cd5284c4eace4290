"""Autoencoders: the seed MLP, a deeper MLP and a convolutional one.

Each has `encode` and `decode` usable on their own (`model.apply(v, x, method="encode")`).
Decoders return pre-activation outputs: reconstructions for an MSE loss, logits
for a Bernoulli (binary cross-entropy) one. `dtype` is the compute dtype (see `layers`):
`encode`, `decode` and the whole model return float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dlu.models.layers import (
  MLP,
  Conv,
  ConvTranspose,
  TableEmbedding,
  dropout,
  kernel_init,
  to_compute,
  to_float32,
)


class MLPAutoencoder(nn.Module):
  """Flattened input (image or vector) -> encoder widths -> latent -> reversed widths -> input.

  The seed model is `encoder_widths=(), latent_dim=128, latent_activation="relu"`:
  Dense(128, relu) then a linear Dense back to the input size. `dropout`: the rate of
  dropout after every hidden layer, the code included (only when applied with a `dropout`
  rng, i.e. in training). `kernel_init`: the initializer of every kernel (a key of
  `layers.KERNEL_INITS`), as in every dlu model. `embedded`: a table's embedded categories
  (`layers.TableEmbedding`), read by the encoder as embeddings of their level ids; the
  decoder's output is every encoded column still, one logit per level.
  """

  image_shape: tuple[int, int, int]
  encoder_widths: Sequence[int] = ()
  latent_dim: int = 128
  latent_activation: str = "linear"
  activation: str = "relu"
  dropout: float = 0.0
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32
  embedded: Sequence[tuple[int, int, int]] = ()

  def setup(self):
    if self.embedded:
      self.table_input = TableEmbedding(
        math.prod(self.image_shape), tuple(self.embedded), dtype=self.dtype
      )
    self.encoder = MLP(
      tuple(self.encoder_widths) + (self.latent_dim,),
      self.activation,
      self.latent_activation,
      dropout=self.dropout,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
    )
    out_dim = math.prod(self.image_shape)
    self.decoder = MLP(
      tuple(reversed(self.encoder_widths)) + (out_dim,),
      self.activation,
      dropout=self.dropout,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
    )
    self.code_dropout = nn.Dropout(self.dropout)

  def _encode(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    if self.embedded:
      x = self.table_input(x)
    return self.encoder(x)  # [B, D] in the compute dtype

  def _decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z).reshape((z.shape[0],) + tuple(self.image_shape))  # [B, H, W, C]

  def encode(self, x: jax.Array) -> jax.Array:
    return to_float32(self._encode(x))  # [B, D]

  def decode(self, z: jax.Array) -> jax.Array:
    return to_float32(self._decode(z))  # [B, H, W, C]

  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, {2, 4})  # vectors [B, D] or images [B, H, W, C]
    z = self._encode(x)
    if self.dropout:
      z = self.code_dropout(z, deterministic=not self.has_rng("dropout"))
    return to_float32(self._decode(z))


class ConvEncoder(nn.Module):
  """Strided convolutions (each halves H and W), then a dense layer to `out_dim`."""

  channels: Sequence[int] = (32, 64)
  out_dim: int = 32
  dropout: float = 0.0  # after each conv layer, in training
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32  # of the layers and the output

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init, dtype = kernel_init(self.kernel_init), self.dtype
    x = to_compute(x, dtype)
    for i, c in enumerate(self.channels):
      conv = Conv(
        c, (3, 3), strides=(2, 2), padding="SAME", kernel_init=init, dtype=dtype, name=f"conv_{i}"
      )
      x = dropout(self, self.dropout, nn.relu(conv(x)))
    dense = nn.Dense(self.out_dim, kernel_init=init, dtype=dtype, name="dense")
    return dense(x.reshape((x.shape[0], -1)))


class ConvDecoder(nn.Module):
  """Dense to a small feature map, strided transposed convs back up, a stride-1 output layer."""

  image_shape: tuple[int, int, int]
  channels: Sequence[int] = (64, 32)
  dropout: float = 0.0  # after each hidden layer, in training
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32  # of the layers and the output

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h, w, c_out = self.image_shape
    scale = 2 ** len(self.channels)
    h0, w0 = h // scale, w // scale
    init, dtype = kernel_init(self.kernel_init), self.dtype
    dense = nn.Dense(h0 * w0 * self.channels[0], kernel_init=init, dtype=dtype, name="dense")
    x = nn.relu(dense(to_compute(z, dtype)))
    x = dropout(self, self.dropout, x).reshape((z.shape[0], h0, w0, self.channels[0]))
    for i, c in enumerate(self.channels):
      deconv = ConvTranspose(
        c,
        (3, 3),
        strides=(2, 2),
        padding="SAME",
        kernel_init=init,
        dtype=dtype,
        name=f"deconv_{i}",
      )
      x = dropout(self, self.dropout, nn.relu(deconv(x)))
    return ConvTranspose(
      c_out, (3, 3), strides=(1, 1), padding="SAME", kernel_init=init, dtype=dtype, name="out"
    )(x)


class ConvAutoencoder(nn.Module):
  image_shape: tuple[int, int, int]
  channels: Sequence[int] = (32, 64)
  latent_dim: int = 32
  dropout: float = 0.0
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = ConvEncoder(
      tuple(self.channels), self.latent_dim, self.dropout, self.kernel_init, self.dtype
    )
    self.decoder = ConvDecoder(
      tuple(self.image_shape),
      tuple(reversed(self.channels)),
      self.dropout,
      self.kernel_init,
      self.dtype,
    )

  def encode(self, x: jax.Array) -> jax.Array:
    return to_float32(self.encoder(x))  # [B, D]

  def decode(self, z: jax.Array) -> jax.Array:
    return to_float32(self.decoder(z))  # [B, H, W, C]

  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 4)
    return to_float32(self.decoder(self.encoder(x)))


def conv_compatible(image_shape: Sequence[int], num_strided: int) -> bool:
  """Whether H and W survive `num_strided` halvings and come back to the same size."""
  scale = 2**num_strided
  return image_shape[0] % scale == 0 and image_shape[1] % scale == 0
