"""Variational autoencoders: an encoder to a diagonal Gaussian posterior and a decoder.

The encoder outputs 2 * latent_dim numbers per image: the posterior mean and log-variance.
The decoder returns pre-activation outputs: Bernoulli logits, or the mean of a Gaussian
whose per-pixel log standard deviation is a learned parameter when `learn_variance`.
Sampling and the bounds are the family's business (dlu/families/vae.py), not the module's.
`dtype` is the compute dtype (see `layers`): the posterior's mean and log-variance and the
decoder's outputs come back in float32, so exp(log-variance), the KL and the likelihoods
are float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dlu.models.autoencoder import ConvDecoder, ConvEncoder
from dlu.models.layers import MLP, TableEmbedding, to_float32


class VAE(nn.Module):
  """`architecture="mlp"`: Dense `widths` both ways; `"conv"`: strided convs `channels`.
  `kernel_init`: the initializer of every kernel (a key of `layers.KERNEL_INITS`).
  `embedded` (mlp): a table's embedded categories, read by the encoder as embeddings of their
  level ids (`layers.TableEmbedding`); the decoder outputs every encoded column still."""

  image_shape: tuple[int, int, int]
  latent_dim: int = 32
  architecture: str = "mlp"
  widths: Sequence[int] = (512, 256)
  channels: Sequence[int] = (32, 64)
  learn_variance: bool = False
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32
  embedded: Sequence[tuple[int, int, int]] = ()

  def setup(self):
    init, dtype = self.kernel_init, self.dtype
    if self.embedded:
      if self.architecture != "mlp":
        raise ValueError("VAE: embedded categories need architecture='mlp'")
      self.table_input = TableEmbedding(
        math.prod(self.image_shape), tuple(self.embedded), dtype=dtype
      )
    if self.architecture == "mlp":
      self.encoder = MLP(tuple(self.widths) + (2 * self.latent_dim,), kernel_init=init, dtype=dtype)
      self.decoder = MLP(
        tuple(reversed(self.widths)) + (math.prod(self.image_shape),),
        kernel_init=init,
        dtype=dtype,
      )
    elif self.architecture == "conv":
      self.encoder = ConvEncoder(
        tuple(self.channels), 2 * self.latent_dim, kernel_init=init, dtype=dtype
      )
      self.decoder = ConvDecoder(
        tuple(self.image_shape), tuple(reversed(self.channels)), kernel_init=init, dtype=dtype
      )
    else:
      raise ValueError(f"unknown VAE architecture {self.architecture!r}")
    if self.learn_variance:
      self.pixel_log_std = self.param("pixel_log_std", nn.initializers.zeros, self.image_shape)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior mean and log-variance. [B, D] each"""
    chex.assert_rank(x, {2, 4})
    if self.architecture == "mlp":
      x = x.reshape((x.shape[0], -1))
    if self.embedded:
      x = self.table_input(x)
    h = to_float32(self.encoder(x))  # [B, 2D]
    return h[:, : self.latent_dim], h[:, self.latent_dim :]

  def decode(self, z: jax.Array) -> jax.Array:
    """[..., D] latents (any leading axes, e.g. [K, B, D]) -> [..., H, W, C] logits or means."""
    lead = z.shape[:-1]
    z = z.reshape((-1, self.latent_dim))
    out = to_float32(self.decoder(z))
    return out.reshape(lead + tuple(self.image_shape))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Decoder output at the posterior mean, with the posterior (for init and inspection)."""
    mean, log_var = self.encode(x)
    return self.decode(mean), mean, log_var
