"""Reconstruction losses and image metrics as pure per-example functions.

Each returns one value per example ([B]); callers take the mean they need, so
the same function serves a training loss and a masked evaluation sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape((x.shape[0], -1))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) over the last axis, with a finite gradient where x is all zeros (a
  ReLU code can be) rather than the NaN of differentiating a norm at 0."""
  nonzero = jnp.any(x != 0, axis=-1, keepdims=True)
  norm = jnp.linalg.norm(jnp.where(nonzero, x, 1.0), axis=-1, keepdims=True)
  return jnp.where(nonzero, x / jnp.maximum(norm, eps), 0.0)


def mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over each example's values (Keras' 'mse'). [B]"""
  return jnp.mean(jnp.square(_flat(prediction) - _flat(target)), axis=-1)


def binary_cross_entropy_with_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean Bernoulli cross-entropy per value, targets in [0, 1] (Keras' 'binary_crossentropy'). [B]"""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(_flat(logits), _flat(target)), axis=-1)


def psnr(
  prediction: jax.Array, target: jax.Array, *, low: float = 0.0, high: float = 1.0
) -> jax.Array:
  """Peak signal-to-noise ratio in dB per example, predictions clipped to [low, high]. [B]"""
  err = jnp.maximum(mse(jnp.clip(prediction, low, high), target), 1e-10)
  return 10.0 * jnp.log10((high - low) ** 2 / err)


def nt_xent(
  z1: jax.Array, z2: jax.Array, *, temperature: float, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array]:
  """SimCLR's normalised-temperature cross-entropy for two views of each example.

  `z1[i]` and `z2[i]` [B, D] are projections of two views of example i. Each of the 2B
  views must pick its partner out of the other 2B - 1 views of the (global) batch by cosine
  similarity / `temperature`. Under pmap (`axis_name`) every device's views are scored
  against the views of all devices, so the loss is the one of the global batch.
  Returns the cross-entropy of each view and whether its partner ranked first,
  as [2B] arrays, rows ordered [views 1; views 2].
  """
  n, dim = z1.shape
  z = jnp.concatenate([z1, z2])
  z = l2_normalize(z)  # [2B, D]
  if axis_name is None:
    keys, offset, total = z, 0, n
  else:  # Keys in the global order [views 1 of all devices; views 2 of all devices].
    gathered = jax.lax.all_gather(z.reshape(2, n, dim), axis_name, axis=1, tiled=True)
    keys, offset = gathered.reshape(-1, dim), jax.lax.axis_index(axis_name) * n
    total = keys.shape[0] // 2
  rows = jnp.arange(2 * n)
  view, i = rows // n, rows % n
  self_col = view * total + offset + i
  partner = (1 - view) * total + offset + i
  logits = z @ keys.T / temperature  # [2B, 2 * total]
  logits = jnp.where(jnp.arange(keys.shape[0])[None, :] == self_col[:, None], -jnp.inf, logits)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, partner)
  top1 = (jnp.argmax(logits, axis=-1) == partner).astype(jnp.float32)
  return loss, top1


def cluster_contrast(
  p1: jax.Array, p2: jax.Array, *, temperature: float, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array]:
  """The cluster-level loss of contrastive clustering (Li et al., AAAI 2021).

  `p1[i]` and `p2[i]` [B, K] are cluster probabilities of two views of example i. Each
  cluster is represented by its column over the (global) batch, and each of the 2K columns
  must pick out the same cluster's column of the other view (NT-Xent on columns), plus
  log K - H for the entropy H of each view's average assignment, which keeps every cluster
  in use. Under pmap (`axis_name`) the columns span the batches of all devices, and every
  device computes the same value. Returns the loss and the mean of the two entropies.
  """
  if axis_name is not None:
    p1, p2 = (jax.lax.all_gather(p, axis_name, axis=0, tiled=True) for p in (p1, p2))
  k = p1.shape[1]
  entropy = lambda p: -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-12)))
  marginal = (entropy(jnp.mean(p1, axis=0)) + entropy(jnp.mean(p2, axis=0))) / 2
  c = jnp.concatenate([p1.T, p2.T])  # [2K, B]
  c = l2_normalize(c)
  logits = jnp.where(jnp.eye(2 * k, dtype=bool), -jnp.inf, c @ c.T / temperature)
  partner = (jnp.arange(2 * k) + k) % (2 * k)
  contrast = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, partner))
  return contrast + 2 * (jnp.log(k) - marginal), marginal


def soft_assign(z: jax.Array, centroids: jax.Array, alpha: float = 1.0) -> jax.Array:
  """DEC's Student-t soft assignments (Xie et al., 2016) of embeddings `z` [B, D] to
  `centroids` [K, D]: q_ij ∝ (1 + |z_i - mu_j|^2 / alpha)^(-(alpha + 1) / 2). [B, K]"""
  d2 = jnp.sum(jnp.square(z[:, None, :] - centroids[None]), axis=-1)  # [B, K]
  # Normalised in log space: far points would underflow a plain power for large alpha.
  logits = -(alpha + 1.0) / 2.0 * jnp.log1p(d2 / alpha)
  return jax.nn.softmax(logits, axis=-1)


def kl_divergence(p: jax.Array, q: jax.Array, eps: float = 1e-12) -> jax.Array:
  """KL(p_i || q_i) per example of distributions [B, K]; p is a fixed target. [B]"""
  p = jax.lax.stop_gradient(p)
  return jnp.sum(p * (jnp.log(p + eps) - jnp.log(q + eps)), axis=-1)
