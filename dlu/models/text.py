"""A Transformer text autoencoder on token ids [B, L] (0 = padding): an encoder over the
document, its outputs mean-pooled over the real tokens to a code (or, `variational`, a Gaussian
posterior's mean and log-variance), and a causal Transformer decoder that predicts each token
from the ones before it (teacher forcing) and the code, added to every input position.

`encode(tokens)`, `logits(z, inputs)` (inputs: the decoder's, the document shifted right behind
the start token) and `__call__(tokens, inputs)`; `dtype` is the compute dtype, outputs float32.
`TextContrastiveNet` is the same encoder and code with a projection head instead of the decoder
(text_simcse); `TextLanguageModel` the same decoder without a code (text_lm).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dlu.models.layers import MLP, dropout, kernel_init, to_float32


class Block(nn.Module):
  """Pre-norm self-attention and a feed-forward layer, both residual."""

  dim: int
  heads: int
  ff: int
  rate: float
  kernel: Any
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = nn.MultiHeadDotProductAttention(
      self.heads, dtype=self.dtype, kernel_init=self.kernel, deterministic=True
    )(h, h, mask=mask)
    x = x + dropout(self, self.rate, h)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = nn.Dense(self.ff, kernel_init=self.kernel, dtype=self.dtype)(h)
    h = nn.Dense(self.dim, kernel_init=self.kernel, dtype=self.dtype)(nn.gelu(h))
    return x + dropout(self, self.rate, h)


class TextAutoencoder(nn.Module):
  vocab_size: int
  max_length: int
  dim: int = 64
  heads: int = 4
  layers: int = 2
  ff: int = 256
  latent_dim: int = 32
  variational: bool = False
  dropout: float = 0.0
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  def setup(self):
    init, dtype = kernel_init(self.kernel_init), self.dtype
    self.embed = nn.Embed(self.vocab_size, self.dim, dtype=dtype, name="embed")
    self.positions = self.param(
      "positions", nn.initializers.normal(0.02), (self.max_length, self.dim)
    )
    block = lambda name, i: Block(
      self.dim, self.heads, self.ff, self.dropout, init, dtype, name=f"{name}_{i}"
    )
    self.encoder = [block("encoder", i) for i in range(self.layers)]
    self.encoder_norm = nn.LayerNorm(dtype=dtype, name="encoder_norm")
    out = 2 * self.latent_dim if self.variational else self.latent_dim
    self.code = nn.Dense(out, kernel_init=init, dtype=dtype, name="code")
    self.from_code = nn.Dense(self.dim, kernel_init=init, dtype=dtype, name="from_code")
    self.decoder = [block("decoder", i) for i in range(self.layers)]
    self.decoder_norm = nn.LayerNorm(dtype=dtype, name="decoder_norm")
    self.out = nn.Dense(self.vocab_size, kernel_init=init, dtype=dtype, name="out")
    self.drop = nn.Dropout(self.dropout)

  def _dropout(self, x: jax.Array) -> jax.Array:
    if not self.dropout:
      return x
    return self.drop(x, deterministic=not self.has_rng("dropout"))

  def _embed(self, tokens: jax.Array) -> jax.Array:
    return self.embed(tokens) + self.positions[: tokens.shape[1]].astype(self.dtype)

  def encode(self, tokens: jax.Array) -> Any:
    """The code [B, D], or (mean, log_var) [B, D] each when `variational`."""
    chex.assert_rank(tokens, 2)  # [B, L]
    real = tokens != 0
    h = self._dropout(self._embed(tokens))
    mask = nn.make_attention_mask(real, real)
    for blk in self.encoder:
      h = blk(h, mask)
    h = self.encoder_norm(h)
    w = real[..., None].astype(h.dtype)
    pooled = jnp.sum(h * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1)
    code = to_float32(self.code(pooled))
    if self.variational:
      mean, log_var = jnp.split(code, 2, axis=-1)
      return mean, log_var
    return code

  def logits(self, z: jax.Array | None, inputs: jax.Array) -> jax.Array:
    """Next-token logits [B, L, V] (or [K, B, L, V] for codes [K, B, D]) of the decoder's
    inputs [B, L], each position seeing the code and the inputs up to itself (z None: no code,
    a language model)."""
    if z is None:
      lead = inputs.shape[:1]
      h = self._embed(inputs)
    else:
      lead = z.shape[:-1]
      z = z.reshape((-1, z.shape[-1]))
      inputs = jnp.broadcast_to(inputs, (*lead[:-1], *inputs.shape))
      inputs = inputs.reshape((-1, inputs.shape[-1]))
      h = self._embed(inputs) + self.from_code(z.astype(self.dtype))[:, None]
    h = self._dropout(h)
    mask = nn.make_causal_mask(inputs)
    for blk in self.decoder:
      h = blk(h, mask)
    out = to_float32(self.out(self.decoder_norm(h)))
    return out.reshape((*lead, *out.shape[1:]))

  def __call__(self, tokens: jax.Array, inputs: jax.Array) -> jax.Array:
    code = self.encode(tokens)
    return self.logits(code[0] if self.variational else code, inputs)


def decoder_inputs(tokens: jax.Array, bos: int) -> jax.Array:
  """The document shifted right behind the start token: position i sees tokens before i. [B, L]"""
  start = jnp.full_like(tokens[:, :1], bos)
  return jnp.concatenate([start, tokens[:, :-1]], axis=1)


class TextLanguageModel(TextAutoencoder):
  """The autoencoder's causal decoder without a code: `__call__(inputs)` (or `logits(None,
  inputs)`) gives next-token logits [B, L, V] of the decoder's inputs. The encoder and the
  code's layers are declared but never called, so never built: the parameters are the
  decoder's, the same as text_ae's decoder but for its input from the code."""

  def __call__(self, inputs: jax.Array) -> jax.Array:
    return self.logits(None, inputs)


class TextContrastiveNet(TextAutoencoder):
  """The autoencoder's encoder and pooled code (`encode`, [B, latent_dim]) without its decoder,
  a projection MLP on the code (`projection`, ReLU between layers, linear output) that the
  contrastive loss alone sees, and with `num_clusters` a cluster head (`projection[0]` hidden
  units, then logits). The decoder's layers are declared but never called, so never built."""

  projection: Sequence[int] = (256, 128)
  num_clusters: int = 0

  def setup(self):
    super().setup()
    init, dtype = self.kernel_init, self.dtype
    self.head = MLP(tuple(self.projection), kernel_init=init, dtype=dtype, name="head")
    if self.num_clusters:
      self.cluster_head = MLP(
        (self.projection[0], self.num_clusters), kernel_init=init, dtype=dtype, name="cluster_head"
      )

  def cluster_logits(self, tokens: jax.Array) -> jax.Array:
    """Logits of the cluster head. [B, num_clusters]"""
    return to_float32(self.cluster_head(self.encode(tokens)))

  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Code [B, latent_dim], projection [B, projection[-1]] and cluster logits [B, K] (None
    without a cluster head)."""
    h = self.encode(tokens)
    logits = to_float32(self.cluster_head(h)) if self.num_clusters else None
    return h, to_float32(self.head(h)), logits
