"""Sequence autoencoders on series [B, T, C]: a 1-D convolutional one and a GRU one with a
pooled code.

Inputs carry their mask: `x` with missing (or padded) steps set to 0 and `mask` [B, T, C]
(1 observed, 0 not), concatenated on the channels so the encoder sees what is missing. Each has
`encode(x, mask)` and `decode(z)`; `dtype` is the compute dtype, and outputs are float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dlu.models.layers import dropout, kernel_init, to_compute, to_float32


def _inputs(x: jax.Array, mask: jax.Array, dtype: Any) -> jax.Array:
  chex.assert_rank(x, 3)  # [B, T, C]
  chex.assert_equal_shape((x, mask))
  return to_compute(jnp.concatenate([x, mask.astype(x.dtype)], axis=-1), dtype)  # [B, T, 2C]


def conv1d_length(length: int, num_strided: int) -> int:
  """Steps left after `num_strided` stride-2 SAME convolutions of `length` steps."""
  for _ in range(num_strided):
    length = math.ceil(length / 2)
  return length


class Conv1DAutoencoder(nn.Module):
  """Strided 1-D convolutions over time (each halves T) -> dense code -> dense to a short
  feature map -> stride-2 transposed convolutions -> a stride-1 output layer to [T, C] (the
  extra steps of the last upsampling cropped)."""

  series_shape: tuple[int, int]  # (T, C)
  channels: Sequence[int] = (32, 64)
  kernel_size: int = 5
  latent_dim: int = 32
  dropout: float = 0.0  # after each hidden layer, in training
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  def setup(self):
    init, dtype, k = kernel_init(self.kernel_init), self.dtype, (self.kernel_size,)
    self.convs = [
      nn.Conv(c, k, strides=(2,), padding="SAME", kernel_init=init, dtype=dtype, name=f"conv_{i}")
      for i, c in enumerate(self.channels)
    ]
    self.code = nn.Dense(self.latent_dim, kernel_init=init, dtype=dtype, name="code")
    self.t0 = conv1d_length(self.series_shape[0], len(self.channels))
    up = tuple(reversed(self.channels))
    self.expand = nn.Dense(self.t0 * up[0], kernel_init=init, dtype=dtype, name="expand")
    self.deconvs = [
      nn.ConvTranspose(
        c, k, strides=(2,), padding="SAME", kernel_init=init, dtype=dtype, name=f"deconv_{i}"
      )
      for i, c in enumerate(up)
    ]
    self.out = nn.Conv(
      self.series_shape[1], k, padding="SAME", kernel_init=init, dtype=dtype, name="out"
    )

  def _encode(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    h = _inputs(x, mask, self.dtype)
    for conv in self.convs:
      h = dropout(self, self.dropout, nn.relu(conv(h)))
    return self.code(h.reshape((h.shape[0], -1)))  # [B, D]

  def _decode(self, z: jax.Array) -> jax.Array:
    h = dropout(self, self.dropout, nn.relu(self.expand(to_compute(z, self.dtype))))
    h = h.reshape((z.shape[0], self.t0, -1))
    for deconv in self.deconvs:
      h = dropout(self, self.dropout, nn.relu(deconv(h)))
    return self.out(h)[:, : self.series_shape[0]]  # [B, T, C]

  def encode(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    return to_float32(self._encode(x, mask))

  def decode(self, z: jax.Array) -> jax.Array:
    return to_float32(self._decode(z))

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    return to_float32(self._decode(self._encode(x, mask)))


class GRUAutoencoder(nn.Module):
  """A GRU over the steps, its outputs mean-pooled over the observed steps to a dense code; the
  code, repeated at every step beside a learned step embedding, runs a second GRU whose outputs
  a dense layer maps to the C channels."""

  series_shape: tuple[int, int]  # (T, C)
  units: int = 64
  latent_dim: int = 32
  dropout: float = 0.0
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  def setup(self):
    init, dtype = kernel_init(self.kernel_init), self.dtype
    self.encoder_rnn = nn.RNN(nn.GRUCell(self.units, dtype=dtype), name="encoder_gru")
    self.code = nn.Dense(self.latent_dim, kernel_init=init, dtype=dtype, name="code")
    self.steps = self.param(
      "step_embedding", nn.initializers.normal(0.1), (self.series_shape[0], self.units)
    )
    self.decoder_rnn = nn.RNN(nn.GRUCell(self.units, dtype=dtype), name="decoder_gru")
    self.out = nn.Dense(self.series_shape[1], kernel_init=init, dtype=dtype, name="out")

  def _encode(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    h = self.encoder_rnn(_inputs(x, mask, self.dtype))  # [B, T, U]
    seen = jnp.any(mask > 0, axis=-1, keepdims=True).astype(h.dtype)  # [B, T, 1]
    pooled = jnp.sum(h * seen, axis=1) / jnp.maximum(jnp.sum(seen, axis=1), 1)
    return self.code(dropout(self, self.dropout, pooled))  # [B, D]

  def _decode(self, z: jax.Array) -> jax.Array:
    t = self.series_shape[0]
    z = to_compute(z, self.dtype)
    steps = jnp.broadcast_to(self.steps.astype(z.dtype), (z.shape[0], t, self.units))
    h = jnp.concatenate([jnp.broadcast_to(z[:, None], (z.shape[0], t, z.shape[-1])), steps], -1)
    return self.out(self.decoder_rnn(h))  # [B, T, C]

  def encode(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    return to_float32(self._encode(x, mask))

  def decode(self, z: jax.Array) -> jax.Array:
    return to_float32(self._decode(z))

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    return to_float32(self._decode(self._encode(x, mask)))
