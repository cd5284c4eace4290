"""The train step gives the same parameters on 1 device, sharded over 8, and under pmap."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from dlu import config, families
from dlu.families import DataSpec
from dlu.runtime import parallel

SPEC = DataSpec((8, 8, 1), 10, 512)


def run_steps(cfg, mesh, parallelism, batches, spec=SPEC):
  """Params and last metrics after one train step per batch of images (also used by other tests)."""
  family = families.get(cfg.model)(cfg, spec)
  init, _ = parallel.make_init(family, mesh)
  state = init(jax.random.key(0))
  step = parallel.make_train_step(family, mesh, parallelism=parallelism)
  if parallelism == "pmap":
    state = parallel.replicate_for_pmap(jax.device_get(state))
  for images in batches:
    local = {"image": images}
    batch = (
      parallel.pmap_batch(local) if parallelism == "pmap" else parallel.global_batch(mesh, local)
    )
    state, metrics = step(state, batch, jax.random.key(1))
  if parallelism == "pmap":
    state = parallel.unreplicate(state)
  return jax.device_get(state.params), jax.device_get(metrics)


# pmap compiles a second program per model; the conv model (slow to compile on CPU) skips it.
@pytest.mark.parametrize(
  "model,optimizer,with_pmap",
  [("ae_seed", "sgd", True), ("ae_mlp", "adam", True), ("ae_conv", "momentum", False)],
)
@pytest.mark.slow
def test_one_device_eight_devices_and_pmap_agree(model, optimizer, with_pmap):
  assert jax.device_count() == 8
  cfg = config.make_config(
    model=model,
    optimizer=optimizer,
    learning_rate=0.05,
    widths=["16"],
    latent_dim=4,
    conv_channels=["4", "8"],
    hidden_units=16,
    dataset="digits",
  )
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8) for _ in range(3)]
  one = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  p1, m1 = run_steps(cfg, one, "jit", batches)
  p8, m8 = run_steps(cfg, parallel.make_mesh(), "jit", batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p8)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  if with_pmap:
    pp, mp = run_steps(cfg, parallel.make_mesh(), "pmap", batches)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, pp)
    np.testing.assert_allclose(m1["loss"], mp["loss"], rtol=1e-5)
  # Parameters actually moved.
  fresh = parallel.make_init(families.get(model)(cfg, SPEC), one)[0](jax.random.key(0)).params
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), jax.device_get(fresh), p1)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_step_metrics_include_norms_and_no_retrace():
  cfg = config.make_config(model="ae_seed", hidden_units=8, optimizer="sgd")
  mesh = parallel.make_mesh()
  family = families.get("ae_seed")(cfg, SPEC)
  state = parallel.make_init(family, mesh)[0](jax.random.key(0))
  step = parallel.make_train_step(family, mesh)
  images = np.zeros((16, 8, 8, 1), np.uint8)
  for _ in range(3):
    state, metrics = step(state, parallel.global_batch(mesh, {"image": images}), jax.random.key(0))
  assert step._cache_size() == 1
  assert {"loss", "grad_norm", "param_norm", "update_norm"} <= set(metrics)
  assert int(state.step) == 3


def test_batch_not_divisible_by_devices_is_an_error():
  from dlu.errors import UsageError

  with pytest.raises(
    UsageError, match="--batch_size=12 must be divisible by the number of devices"
  ):
    parallel.check_batch_size(12)


def test_dispatch_window_waits_on_the_oldest_outputs_beyond_its_depth(monkeypatch):
  waited = []
  monkeypatch.setattr(parallel.jax, "block_until_ready", waited.append)
  window = parallel.DispatchWindow(depth=2)
  for i in range(5):
    window.push(i)
  # The host ran at most two dispatches ahead: it waited on 0, 1, 2, in order.
  assert waited == [0, 1, 2]


@pytest.mark.parametrize("model,with_pmap", [("simclr_mlp", False)])
@pytest.mark.slow
def test_vectors_on_one_device_eight_devices_agree(model, with_pmap):
  """Tables train as images do: SimCLR's SCARF views draw each feature's replacement from the
  global batch, whatever the devices. (Under pmap they come from each device's rows: only jit
  is compared.)"""
  cfg = config.make_config(
    model=model,
    optimizer="sgd",
    learning_rate=0.05,
    widths=["16"],
    latent_dim=4,
    projection_dims=["8"],
    dataset="csv:unused.csv",
  )
  spec = DataSpec((13,), 3, 512)
  rng = np.random.default_rng(0)
  batches = [rng.normal(size=(64, 13)).astype(np.float32) for _ in range(3)]
  one = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  p1, m1 = run_steps(cfg, one, "jit", batches, spec)
  p8, m8 = run_steps(cfg, parallel.make_mesh(), "jit", batches, spec)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p8)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  if with_pmap:
    pp, _ = run_steps(cfg, parallel.make_mesh(), "pmap", batches, spec)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, pp)
