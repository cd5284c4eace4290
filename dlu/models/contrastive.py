"""Encoders trained by contrast of random views (SimCLR): an encoder to the representation
that downstream use keeps (`encode`), a projection head the loss alone sees, and optionally
a cluster head (contrastive clustering) giving logits over `num_clusters` clusters."""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax

from dlu.models.autoencoder import ConvEncoder
from dlu.models.layers import MLP


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

  def setup(self):
    init = self.kernel_init
    if self.encoder == "conv":
      self.backbone = ConvEncoder(tuple(self.channels), self.feature_dim, kernel_init=init)
    else:
      self.backbone = MLP(tuple(self.widths) + (self.feature_dim,), kernel_init=init)
    self.head = MLP(tuple(self.projection), kernel_init=init)
    if self.num_clusters:
      self.cluster_head = MLP((self.projection[0], self.num_clusters), kernel_init=init)

  def encode(self, x: jax.Array) -> jax.Array:
    """The representation. [B, feature_dim]"""
    if self.encoder != "conv":
      x = x.reshape((x.shape[0], -1))
    return nn.relu(self.backbone(x))

  def cluster_logits(self, x: jax.Array) -> jax.Array:
    """Logits of the cluster head. [B, num_clusters]"""
    return self.cluster_head(self.encode(x))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Representation [B, feature_dim], projection [B, projection[-1]] and cluster logits
    [B, num_clusters] (None without a cluster head)."""
    chex.assert_rank(x, {2, 4})
    h = self.encode(x)
    return h, self.head(h), self.cluster_head(h) if self.num_clusters else None
