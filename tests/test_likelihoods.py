"""Log-likelihoods, KL and the IWAE bound against scipy.stats and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from dlu.ops import likelihoods


def test_bernoulli_log_prob_matches_scipy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (4, 5, 6, 1)).astype(np.float32)
  x = rng.integers(0, 2, logits.shape).astype(np.float32)
  expected = stats.bernoulli.logpmf(x, special.expit(logits.astype(np.float64))).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(likelihoods.bernoulli_log_prob(logits, x), expected, rtol=1e-5)
  # Extreme logits stay finite and exact: log sigmoid(-30) = -30 - log(1 + e^-30).
  out = likelihoods.bernoulli_log_prob(jnp.full((1, 1, 1, 1), -30.0), jnp.ones((1, 1, 1, 1)))
  np.testing.assert_allclose(out, [-30.0], rtol=1e-6)


def test_bernoulli_log_prob_keeps_leading_sample_axes():
  logits = jnp.zeros((3, 2, 4, 4, 1))  # [K, B, H, W, C]
  out = likelihoods.bernoulli_log_prob(logits, jnp.ones((1, 2, 4, 4, 1)))
  np.testing.assert_allclose(out, np.full((3, 2), 16 * math.log(0.5)), rtol=1e-6)


def test_gaussian_log_prob_matches_scipy():
  rng = np.random.default_rng(1)
  mean = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
  x = rng.normal(size=mean.shape).astype(np.float32)
  log_std = rng.normal(0, 0.5, size=(4, 4, 2)).astype(np.float32)  # per pixel, shared by examples
  expected = stats.norm.logpdf(x, mean, np.exp(log_std)).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(likelihoods.gaussian_log_prob(mean, log_std, x), expected, rtol=1e-5)
  fixed = stats.norm.logpdf(x, mean, 0.1).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(
    likelihoods.gaussian_log_prob(mean, math.log(0.1), x), fixed, rtol=1e-5
  )


def test_latent_log_probs_match_scipy():
  rng = np.random.default_rng(2)
  z, mean = rng.normal(size=(2, 5, 3)).astype(np.float32)
  log_var = rng.normal(size=(5, 3)).astype(np.float32)
  expected = [
    stats.multivariate_normal.logpdf(z[i], mean[i], np.diag(np.exp(log_var[i]))) for i in range(5)
  ]
  np.testing.assert_allclose(
    likelihoods.diag_gaussian_log_prob(z, mean, log_var), expected, rtol=1e-5
  )
  np.testing.assert_allclose(
    likelihoods.standard_normal_log_prob(z),
    stats.multivariate_normal.logpdf(z, np.zeros(3)),
    rtol=1e-5,
  )


def test_kl_closed_form_for_known_gaussians():
  kl = likelihoods.kl_to_standard_normal
  np.testing.assert_allclose(kl(jnp.zeros((1, 4)), jnp.zeros((1, 4))), [0.0], atol=1e-7)
  # Unit variances: KL = |mean|^2 / 2.
  np.testing.assert_allclose(kl(jnp.array([[1.0, -2.0]]), jnp.zeros((1, 2))), [2.5], rtol=1e-6)
  # One dim, mean 0, variance 4: (4 - 1 - log 4) / 2.
  np.testing.assert_allclose(
    kl(jnp.zeros((1, 1)), jnp.full((1, 1), math.log(4.0))), [(3 - math.log(4)) / 2], rtol=1e-6
  )


@pytest.mark.parametrize("mean,var", [(0.7, 0.3), (-1.5, 2.0), (0.0, 0.05)])
def test_kl_equals_the_integral(mean, var):
  q, p = stats.norm(mean, math.sqrt(var)), stats.norm(0.0, 1.0)
  integral, _ = integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)), -30, 30, limit=200)
  got = likelihoods.kl_to_standard_normal(jnp.array([[mean]]), jnp.log(jnp.array([[var]])))
  np.testing.assert_allclose(got, [integral], rtol=1e-5)


def test_kl_is_the_expected_log_ratio_of_the_sample_terms():
  mean, log_var = jnp.array([[0.5, -1.0, 2.0]]), jnp.array([[-1.0, 0.3, 0.0]])
  z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(jax.random.key(0), (200_000, 1, 3))
  log_ratio = likelihoods.diag_gaussian_log_prob(
    z, mean, log_var
  ) - likelihoods.standard_normal_log_prob(z)
  np.testing.assert_allclose(
    jnp.mean(log_ratio), likelihoods.kl_to_standard_normal(mean, log_var)[0], rtol=1e-2
  )


def test_importance_weighted_bound():
  log_w = jnp.log(jnp.array([[1.0, 2.0], [3.0, 4.0]]))  # [K=2, B=2]
  np.testing.assert_allclose(
    likelihoods.importance_weighted_bound(log_w), np.log([2.0, 3.0]), rtol=1e-6
  )
  # K=1: the bound is the one log weight, i.e. the ELBO's single-sample estimate.
  np.testing.assert_allclose(likelihoods.importance_weighted_bound(log_w[:1]), log_w[0])
  # Huge log weights do not overflow.
  np.testing.assert_allclose(
    likelihoods.importance_weighted_bound(jnp.array([[-1e4], [-1e4]])), [-1e4], rtol=1e-7
  )


def test_bits_per_dim():
  assert likelihoods.bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
  # A density on [0, 1]-scaled 8-bit pixels: the 1/256 bins add 8 bits per dim.
  assert likelihoods.bits_per_dim(0.0, 10, bin_width=1 / 256) == pytest.approx(8.0)
