"""GAN losses against hand-computed values; the penalties against finite differences."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from dlu.ops import gan_losses

REAL = jnp.array([2.0, -0.5])
FAKE = jnp.array([-1.0, 0.5])


def softplus(v):
  return math.log1p(math.exp(v))


def test_non_saturating():
  # -log sigmoid(r) = softplus(-r); -log(1 - sigmoid(f)) = softplus(f).
  d = (softplus(-2.0) + softplus(0.5)) / 2 + (softplus(-1.0) + softplus(0.5)) / 2
  g = (softplus(1.0) + softplus(-0.5)) / 2
  np.testing.assert_allclose(
    gan_losses.discriminator_loss(real_logit=REAL, fake_logit=FAKE, loss_type="ns"), d, rtol=1e-6
  )
  np.testing.assert_allclose(
    gan_losses.generator_loss(fake_logit=FAKE, loss_type="ns"), g, rtol=1e-6
  )


def test_hinge():
  # relu(1 - r): [0, 1.5]; relu(1 + f): [0, 1.5].
  np.testing.assert_allclose(
    gan_losses.discriminator_loss(real_logit=REAL, fake_logit=FAKE, loss_type="hinge"), 0.75 + 0.75
  )
  np.testing.assert_allclose(gan_losses.generator_loss(fake_logit=FAKE, loss_type="hinge"), 0.25)


def test_wasserstein():
  # mean(f) - mean(r) = -0.25 - 0.75.
  np.testing.assert_allclose(
    gan_losses.discriminator_loss(real_logit=REAL, fake_logit=FAKE, loss_type="wgan_gp"), -1.0
  )
  np.testing.assert_allclose(gan_losses.generator_loss(fake_logit=FAKE, loss_type="wgan_gp"), 0.25)


def test_unknown_loss_type():
  with pytest.raises(ValueError, match="unknown GAN loss 'lsgan'"):
    gan_losses.generator_loss(fake_logit=FAKE, loss_type="lsgan")


W = np.random.default_rng(0).normal(size=(8, 3))
V = np.array([0.5, -1.0, 2.0])


def critic_np(x):  # [B, 2, 2, 2] -> [B]: a smooth nonlinear critic
  return np.tanh(x.reshape(len(x), -1) @ W) @ V


def critic_jax(x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ jnp.asarray(W, jnp.float32)) @ jnp.asarray(
    V, jnp.float32
  )


def finite_difference_grads(x, h=1e-5):
  """Central differences of each example's score w.r.t. its own input, in float64. [B, ...]"""
  grads = np.zeros_like(x)
  flat = grads.reshape(len(x), -1)
  for j in range(flat.shape[1]):
    step = np.zeros(flat.shape[1])
    step[j] = h
    up = critic_np(x + step.reshape(x.shape[1:]))
    down = critic_np(x - step.reshape(x.shape[1:]))
    flat[:, j] = (up - down) / (2 * h)
  return grads


def test_gradient_penalty_matches_finite_differences():
  rng = np.random.default_rng(1)
  real, fake = rng.normal(size=(5, 2, 2, 2)), rng.normal(size=(5, 2, 2, 2))
  weights = rng.uniform(size=5)
  x_hat = weights[:, None, None, None] * real + (1 - weights[:, None, None, None]) * fake
  norms = np.linalg.norm(finite_difference_grads(x_hat).reshape(5, -1), axis=1)
  expected = np.mean((norms - 1) ** 2)
  got = gan_losses.gradient_penalty(
    critic_jax,
    real=jnp.asarray(real, jnp.float32),
    fake=jnp.asarray(fake, jnp.float32),
    weights=jnp.asarray(weights, jnp.float32),
  )
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  assert expected > 0.01  # not trivially zero


def test_r1_penalty_matches_finite_differences():
  real = np.random.default_rng(2).normal(size=(4, 2, 2, 2))
  expected = np.mean(np.sum(finite_difference_grads(real).reshape(4, -1) ** 2, axis=1))
  got = gan_losses.r1_penalty(critic_jax, jnp.asarray(real, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_penalties_of_a_linear_critic():
  # D(x) = w.x: the input gradient is w everywhere, so GP = (|w| - 1)^2 and R1 = |w|^2.
  w = jnp.array([3.0, 4.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 2, 2, 1)), jnp.float32)
  gp = gan_losses.gradient_penalty(critic, real=x, fake=-x, weights=jnp.linspace(0, 1, 6))
  np.testing.assert_allclose(gp, 16.0, rtol=1e-5)
  np.testing.assert_allclose(gan_losses.r1_penalty(critic, x), 25.0, rtol=1e-5)


def test_interpolate_per_example_weights():
  real, fake = jnp.ones((2, 1, 1, 1)), jnp.zeros((2, 1, 1, 1))
  out = gan_losses.interpolate(real, fake, jnp.array([0.25, 1.0]))
  np.testing.assert_allclose(out.reshape(-1), [0.25, 1.0])
