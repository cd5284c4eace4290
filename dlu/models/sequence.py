"""Models of series [B, T, C]: autoencoders (1-D convolutional, and a GRU with a pooled code),
a VAE over either, and a dilated 1-D convolutional encoder for contrastive training.

Autoencoder inputs carry their mask: `x` with missing (or padded) steps set to 0 and `mask`
[B, T, C] (1 observed, 0 not), concatenated on the channels so the encoder sees what is missing.
Each has `encode(x, mask)` and `decode(z)`. `SeriesVAE` and `Conv1DContrastiveNet` take series
with NaN where a step is missing and split them themselves, so the families' image code paths
(which pass one array) work unchanged. `dtype` is the compute dtype; outputs are float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dlu.models.layers import MLP, dropout, kernel_init, to_compute, to_float32


def _inputs(x: jax.Array, mask: jax.Array, dtype: Any) -> jax.Array:
  chex.assert_rank(x, 3)  # [B, T, C]
  chex.assert_equal_shape((x, mask))
  return to_compute(jnp.concatenate([x, mask.astype(x.dtype)], axis=-1), dtype)  # [B, T, 2C]


def split_nan(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x with NaN steps 0, mask 1.0 where observed) of series [B, T, C]."""
  mask = jnp.isfinite(x)
  return jnp.where(mask, x, 0.0), mask.astype(jnp.float32)


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


class SeriesVAE(nn.Module):
  """A VAE over a series autoencoder whose code has twice `latent_dim` units: its first half
  is the posterior mean, its second the log-variance; the decoder maps a `latent_dim` sample
  back to [T, C] means. `learn_variance`: a learned log standard deviation per step and
  channel (`pixel_log_std`, the name the VAE family reads)."""

  autoencoder: nn.Module  # Conv1DAutoencoder or GRUAutoencoder with latent_dim = 2 * latent_dim
  latent_dim: int
  series_shape: tuple[int, int]
  learn_variance: bool = False

  def setup(self):
    if self.learn_variance:
      self.pixel_log_std = self.param("pixel_log_std", nn.initializers.zeros, self.series_shape)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior mean and log-variance of series with NaN missing steps. [B, D] each"""
    h = self.autoencoder.encode(*split_nan(x))  # [B, 2D]
    return h[:, : self.latent_dim], h[:, self.latent_dim :]

  def decode(self, z: jax.Array) -> jax.Array:
    """[..., D] latents -> [..., T, C] means."""
    lead = z.shape[:-1]
    out = self.autoencoder.decode(z.reshape((-1, self.latent_dim)))
    return out.reshape(lead + tuple(self.series_shape))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    mean, log_var = self.encode(x)
    return self.decode(mean), mean, log_var


class Conv1DContrastiveNet(nn.Module):
  """A TS2Vec-like encoder: a dense input projection of each step (values beside the mask),
  residual blocks of two dilated 1-D convolutions (dilation 2^i in block i, `channels` wide,
  GELU), max-pooled over the observed steps and mapped by a dense layer to the representation
  (`encode`, [B, feature_dim]); the projection MLP and the optional cluster head on it, as
  `ContrastiveNet` has them."""

  channels: Sequence[int] = (64, 64, 64)
  kernel_size: int = 3
  feature_dim: int = 128
  projection: Sequence[int] = (256, 128)
  num_clusters: int = 0
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  def setup(self):
    init, dtype, k = kernel_init(self.kernel_init), self.dtype, (self.kernel_size,)
    self.input_proj = nn.Dense(self.channels[0], kernel_init=init, dtype=dtype, name="input")
    self.blocks = [
      (
        nn.Conv(c, k, kernel_dilation=(2**i,), padding="SAME", kernel_init=init, dtype=dtype),
        nn.Conv(c, k, kernel_dilation=(2**i,), padding="SAME", kernel_init=init, dtype=dtype),
        nn.Dense(c, kernel_init=init, dtype=dtype),  # the skip's projection
      )
      for i, c in enumerate(self.channels)
    ]
    self.out = nn.Dense(self.feature_dim, kernel_init=init, dtype=dtype, name="representation")
    self.head = MLP(tuple(self.projection), kernel_init=self.kernel_init, dtype=dtype)
    if self.num_clusters:
      self.cluster_head = MLP(
        (self.projection[0], self.num_clusters), kernel_init=self.kernel_init, dtype=dtype
      )

  def _encode(self, series: jax.Array) -> jax.Array:
    x, mask = split_nan(series)
    h = self.input_proj(_inputs(x, mask, self.dtype))  # [B, T, channels[0]]
    seen = jnp.any(mask > 0, axis=-1, keepdims=True)  # [B, T, 1]
    for conv_a, conv_b, skip in self.blocks:
      r = conv_b(nn.gelu(conv_a(nn.gelu(h))))
      h = (skip(h) if h.shape[-1] != r.shape[-1] else h) + r
    pooled = jnp.max(jnp.where(seen, h, -jnp.inf), axis=1)  # [B, channels[-1]]
    pooled = jnp.where(jnp.any(seen, axis=1), pooled, 0.0)  # a series with no observed step
    return self.out(pooled)  # [B, feature_dim]

  def encode(self, series: jax.Array) -> jax.Array:
    """The representation of series with NaN missing steps. [B, feature_dim]"""
    return to_float32(self._encode(series))

  def cluster_logits(self, series: jax.Array) -> jax.Array:
    return to_float32(self.cluster_head(self._encode(series)))

  def __call__(self, series: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Representation [B, feature_dim], projection [B, projection[-1]], cluster logits."""
    chex.assert_rank(series, 3)
    h = self._encode(series)
    logits = to_float32(self.cluster_head(h)) if self.num_clusters else None
    return to_float32(h), to_float32(self.head(h)), logits
