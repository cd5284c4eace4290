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


def mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over each example's values (Keras' 'mse'). [B]"""
  return jnp.mean(jnp.square(_flat(prediction) - _flat(target)), axis=-1)


def binary_cross_entropy_with_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean Bernoulli cross-entropy per value, targets in [0, 1] (Keras' 'binary_crossentropy'). [B]"""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(_flat(logits), _flat(target)), axis=-1)


def psnr(prediction: jax.Array, target: jax.Array, *, low: float = 0.0,
         high: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per example, predictions clipped to [low, high]. [B]"""
  err = jnp.maximum(mse(jnp.clip(prediction, low, high), target), 1e-10)
  return 10.0 * jnp.log10((high - low) ** 2 / err)
