"""Encoders trained by contrast of random views (SimCLR): an encoder to the representation
that downstream use keeps (`encode`), a projection head the loss alone sees, and optionally
a cluster head (contrastive clustering) giving logits over `num_clusters` clusters.
`dtype` is the compute dtype (see `layers`): representations, projections and logits come
back in float32, so the temperature-scaled similarities and softmaxes are float32."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dlu.models.autoencoder import ConvEncoder
from dlu.models.layers import MLP, to_float32


class ContrastiveNet(nn.Module):
  """encoder: "mlp" (flattened image -> `widths` -> `feature_dim`) or "conv" (strided
  convolutions with `channels`, then a dense layer to `feature_dim`), ReLU features; then
  the projection MLP (`projection`, ReLU between layers, linear output); with `num_clusters`,
  also the cluster head on the representation (`projection[0]` hidden units, then logits).
  `kernel_init`: the initializer of every kernel (a key of `layers.KERNEL_INITS`)."""

  encoder: str = "mlp"
  widths: Sequence[int] = (1024, 512)
  channels: Sequence[int] = (32, 64)
  feature_dim: int = 256
  projection: Sequence[int] = (256, 128)
  num_clusters: int = 0
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  def setup(self):
    init, dtype = self.kernel_init, self.dtype
    if self.encoder == "conv":
      self.backbone = ConvEncoder(
        tuple(self.channels), self.feature_dim, kernel_init=init, dtype=dtype
      )
    else:
      self.backbone = MLP(tuple(self.widths) + (self.feature_dim,), kernel_init=init, dtype=dtype)
    self.head = MLP(tuple(self.projection), kernel_init=init, dtype=dtype)
    if self.num_clusters:
      self.cluster_head = MLP(
        (self.projection[0], self.num_clusters), kernel_init=init, dtype=dtype
      )

  def _encode(self, x: jax.Array) -> jax.Array:
    if self.encoder != "conv":
      x = x.reshape((x.shape[0], -1))
    return nn.relu(self.backbone(x))  # [B, feature_dim] in the compute dtype

  def encode(self, x: jax.Array) -> jax.Array:
    """The representation. [B, feature_dim]"""
    return to_float32(self._encode(x))

  def cluster_logits(self, x: jax.Array) -> jax.Array:
    """Logits of the cluster head. [B, num_clusters]"""
    return to_float32(self.cluster_head(self._encode(x)))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Representation [B, feature_dim], projection [B, projection[-1]] and cluster logits
    [B, num_clusters] (None without a cluster head)."""
    chex.assert_rank(x, {2, 4})
    h = self._encode(x)
    logits = to_float32(self.cluster_head(h)) if self.num_clusters else None
    return to_float32(h), to_float32(self.head(h)), logits
