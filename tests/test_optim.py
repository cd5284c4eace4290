"""Optimizers and schedules from flags."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlu import config
from dlu.runtime import optim


def _cfg(**kw):
  return config.make_config(**kw)


def test_schedules():
  lr = optim.learning_rate_schedule(_cfg(learning_rate=1.0, num_steps=100, schedule="constant"))
  assert float(lr(50)) == 1.0
  lr = optim.learning_rate_schedule(_cfg(learning_rate=1.0, num_steps=100, schedule="cosine"))
  assert float(lr(0)) == pytest.approx(1.0) and float(lr(100)) == pytest.approx(0.0, abs=1e-6)
  assert float(lr(50)) == pytest.approx(0.5, abs=1e-6)
  lr = optim.learning_rate_schedule(
    _cfg(learning_rate=1.0, num_steps=110, schedule="linear", warmup_steps=10)
  )
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(60)) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["gd", "sgd", "momentum", "adam", "adamw"])
def test_each_optimizer_descends_a_quadratic(name):
  tx = optim.make_optimizer(
    _cfg(optimizer=name, learning_rate=0.1, grad_clip=1.0, weight_decay=1e-4)
  )
  params = {"w": jnp.array([3.0, -2.0])}
  state = tx.init(params)
  for _ in range(50):
    grads = {"w": 2 * params["w"]}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert float(jnp.sum(params["w"] ** 2)) < 13.0 * 0.5


def test_plain_sgd_step_is_lr_times_gradient():
  tx = optim.make_optimizer(_cfg(optimizer="sgd", learning_rate=0.5))
  params = {"w": jnp.array([1.0])}
  updates, _ = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-1.0])


def test_clipping_bounds_the_update():
  tx = optim.make_optimizer(_cfg(optimizer="sgd", learning_rate=1.0, grad_clip=1.0))
  params = {"w": jnp.zeros(2)}
  updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)
