"""Encoders trained by contrast of random views (SimCLR): an encoder to the representation
that downstream use keeps (`encode`), and a projection head the loss alone sees."""

from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax

from dlu.models.autoencoder import ConvEncoder
from dlu.models.layers import MLP


class ContrastiveNet(nn.Module):
  """encoder: "mlp" (flattened image -> `widths` -> `feature_dim`) or "conv" (strided
  convolutions with `channels`, then a dense layer to `feature_dim`), ReLU features; then
  the projection MLP (`projection`, ReLU between layers, linear output)."""
  encoder: str = "mlp"
  widths: Sequence[int] = (1024, 512)
  channels: Sequence[int] = (32, 64)
  feature_dim: int = 256
  projection: Sequence[int] = (256, 128)

  def setup(self):
    if self.encoder == "conv":
      self.backbone = ConvEncoder(tuple(self.channels), self.feature_dim)
    else:
      self.backbone = MLP(tuple(self.widths) + (self.feature_dim,))
    self.head = MLP(tuple(self.projection))

  def encode(self, x: jax.Array) -> jax.Array:
    """The representation. [B, feature_dim]"""
    if self.encoder != "conv":
      x = x.reshape((x.shape[0], -1))
    return nn.relu(self.backbone(x))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    chex.assert_rank(x, 4)
    h = self.encode(x)
    return h, self.head(h)  # [B, feature_dim], [B, projection[-1]]
