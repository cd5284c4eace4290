"""Log-likelihoods, KL divergences and importance-weighted bounds as pure functions.

Everything is in nats. Leading axes are kept (examples, importance samples, ...);
the trailing `event_ndims` axes (the pixels of an image, the dims of a latent)
are summed, so each function returns one value per example (and per sample).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy import stats

IMAGE_EVENT_NDIMS = 3  # [H, W, C]


def _sum_event(values: jax.Array, event_ndims: int) -> jax.Array:
  return jnp.sum(values, axis=tuple(range(values.ndim - event_ndims, values.ndim)))


def bernoulli_log_prob(
  logits: jax.Array, x: jax.Array, *, event_ndims: int = IMAGE_EVENT_NDIMS
) -> jax.Array:
  """log Bernoulli(x | sigmoid(logits)) summed over the event; x in {0, 1} (or [0, 1]). [...]"""
  # x log s(l) + (1 - x) log s(-l), with log s(l) = l - softplus(l): one softplus a value.
  values = x * logits - jax.nn.softplus(logits)
  return _sum_event(values, event_ndims)


def gaussian_log_prob(
  mean: jax.Array, log_std: jax.Array | float, x: jax.Array, *, event_ndims: int = IMAGE_EVENT_NDIMS
) -> jax.Array:
  """log N(x | mean, exp(log_std)^2) summed over the event (a density: may be positive). [...]"""
  return _sum_event(stats.norm.logpdf(x, mean, jnp.exp(log_std)), event_ndims)


def diag_gaussian_log_prob(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """log N(z | mean, diag(exp(log_var))) over the last axis. [...]"""
  return _sum_event(stats.norm.logpdf(z, mean, jnp.exp(0.5 * log_var)), 1)


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
  """log N(z | 0, I) over the last axis. [...]"""
  return _sum_event(stats.norm.logpdf(z), 1)


def kl_to_standard_normal(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mean, diag(exp(log_var))) || N(0, I)) in closed form, over the last axis. [...]"""
  return 0.5 * jnp.sum(jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var, axis=-1)


def importance_weighted_bound(log_weights: jax.Array, *, axis: int = 0) -> jax.Array:
  """log (1/K) sum_k w_k over `axis` (the K samples): the IWAE bound; K=1 is the ELBO."""
  return jax.nn.logsumexp(log_weights, axis=axis) - math.log(log_weights.shape[axis])


def bits_per_dim(nll: float, num_dims: int, *, bin_width: float | None = None) -> float:
  """Nats per example to bits per dimension.

  For discrete data (binarised pixels) `bin_width` is None. For a density on 8-bit data
  scaled to a range of width r, pass `bin_width=r/256`: the probability of a pixel's bin
  is about the density times the bin width, which adds log2(1/bin_width) bits per dim.
  """
  bits = nll / (num_dims * math.log(2.0))
  return bits if bin_width is None else bits - math.log2(bin_width)


def samples_per_chunk(num_samples: int, batch_size: int, max_decodes: int) -> int:
  """The largest divisor of `num_samples` with batch_size * it <= max_decodes (at least 1)."""
  cap = max(1, max_decodes // batch_size)
  return max(c for c in range(1, min(cap, num_samples) + 1) if num_samples % c == 0)
