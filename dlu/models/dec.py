"""DEC's clustering layer (Xie et al., 2016): Student-t soft assignments to learnable
centroids, the sharpened target distribution and the KL loss between them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def soft_assign(z: jax.Array, centroids: jax.Array, alpha: float = 1.0) -> jax.Array:
  """q_ij ∝ (1 + |z_i - mu_j|^2 / alpha)^(-(alpha + 1) / 2), rows normalised. [B, K]"""
  d2 = jnp.sum(jnp.square(z[:, None, :] - centroids[None]), axis=-1)  # [B, K]
  # Normalised in log space: far points would underflow a plain power for large alpha.
  logits = -(alpha + 1.0) / 2.0 * jnp.log1p(d2 / alpha)
  return jax.nn.softmax(logits, axis=-1)


def target_distribution(q: jax.Array) -> jax.Array:
  """p_ij ∝ q_ij^2 / f_j, f_j = sum_i q_ij: sharper, and frequent clusters weigh less. [N, K]"""
  weight = jnp.square(q) / jnp.sum(q, axis=0)
  return weight / jnp.sum(weight, axis=1, keepdims=True)


def kl_divergence(p: jax.Array, q: jax.Array, eps: float = 1e-12) -> jax.Array:
  """KL(p_i || q_i) per example; p is a fixed target. [B]"""
  p = jax.lax.stop_gradient(p)
  return jnp.sum(p * (jnp.log(p + eps) - jnp.log(q + eps)), axis=-1)


class ClusteringLayer(nn.Module):
  """Embeddings [B, D] -> soft assignments [B, K] over `n_clusters` learnable centroids."""
  n_clusters: int
  alpha: float = 1.0

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    centroids = self.param("centroids", nn.initializers.normal(1.0), (self.n_clusters, z.shape[-1]))
    return soft_assign(z, centroids, self.alpha)
