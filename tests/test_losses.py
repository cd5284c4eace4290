"""Loss and metric functions against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np

from dlu.ops import losses


def test_mse_is_mean_over_each_example():
  pred = jnp.array([[0.0, 1.0], [1.0, 1.0]]).reshape(2, 1, 2, 1)
  target = jnp.array([[0.0, 0.0], [0.0, 0.0]]).reshape(2, 1, 2, 1)
  np.testing.assert_allclose(losses.mse(pred, target), [0.5, 1.0])


def test_bce_with_logits_matches_hand_computation():
  logits = jnp.array([[0.0, 2.0]])
  target = jnp.array([[1.0, 0.0]])
  p = 1 / (1 + math.exp(-2.0))
  expected = (-math.log(0.5) - math.log(1 - p)) / 2
  np.testing.assert_allclose(
    losses.binary_cross_entropy_with_logits(logits, target), [expected], rtol=1e-6
  )


def test_psnr():
  target = jnp.zeros((1, 4))
  pred = jnp.full((1, 4), 0.1)  # mse 0.01 -> 20 dB
  np.testing.assert_allclose(losses.psnr(pred, target), [20.0], rtol=1e-5)
  # Symmetric range [-1, 1]: (2^2)/0.01 -> 26.02 dB.
  np.testing.assert_allclose(
    losses.psnr(pred, target, low=-1.0, high=1.0), [10 * math.log10(400)], rtol=1e-5
  )
  # Predictions are clipped to the range before the error is taken.
  np.testing.assert_allclose(losses.psnr(jnp.full((1, 4), -5.0), target), [100.0], rtol=1e-5)
