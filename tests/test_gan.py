"""The GAN family: model shapes, flags, the data-parallel step, EMA, the feature network."""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from dlu import config, data, evaluators, families
from dlu.errors import UsageError
from dlu.families import DataSpec
from dlu.metrics import feature_net
from dlu.models import gan as gan_models
from dlu.runtime import parallel
from dlu.train import evaluate

SPEC = DataSpec((8, 8, 1), 10, 512, "symmetric")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**overrides):
  base = dict(
    model="dcgan",
    dataset="digits",
    pixel_range="symmetric",
    gan_channels=4,
    latent_dim=8,
    gan_widths=["16"],
    batch_size=32,
  )
  return config.make_config(**{**base, **overrides})


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (8, 8, 1)])
def test_dcgan_shapes(shape):
  g, d = gan_models.DCGANGenerator(shape, channels=8), gan_models.DCGANDiscriminator(8)
  z = jnp.zeros((3, 16))
  g_vars = jax.eval_shape(g.init, jax.random.key(0), z)
  assert jax.eval_shape(lambda v: g.apply(v, z, train=False), g_vars).shape == (3,) + shape
  # BatchNorm keeps running statistics for both hidden layers.
  assert set(g_vars["batch_stats"]) == {"bn_0", "bn_1"}
  x = jnp.zeros((3,) + shape)
  d_vars = jax.eval_shape(d.init, jax.random.key(0), x)
  assert jax.eval_shape(d.apply, d_vars, x).shape == (3,)
  feats = jax.eval_shape(lambda v: d.apply(v, x, method="embed"), d_vars)
  assert feats.shape == (3, shape[0] // 4 * shape[1] // 4 * 16)


def test_mlp_gan_shapes():
  g, d = gan_models.MLPGenerator((28, 28, 1), (32, 64)), gan_models.MLPDiscriminator((64, 32))
  g_vars = jax.eval_shape(g.init, jax.random.key(0), jnp.zeros((2, 5)))
  assert jax.eval_shape(lambda v: g.apply(v, jnp.zeros((2, 5)), train=False), g_vars).shape == (
    2,
    28,
    28,
    1,
  )
  x = jnp.zeros((2, 28, 28, 1))
  d_vars = jax.eval_shape(d.init, jax.random.key(0), x)
  assert jax.eval_shape(d.apply, d_vars, x).shape == (2,)
  assert jax.eval_shape(lambda v: d.apply(v, x, method="embed"), d_vars).shape == (2, 32)


def test_evaluation_uses_running_averages_not_the_batch():
  g = gan_models.MLPGenerator((4, 4, 1), (8,))
  z = jax.random.normal(jax.random.key(1), (6, 3))
  variables = jax.jit(lambda k: g.init(k, z, train=False))(jax.random.key(0))
  rng = np.random.default_rng(0)
  stats = {"bn_0": {"mean": rng.normal(size=8), "var": rng.uniform(0.5, 2, size=8)}}
  variables = {**variables, "batch_stats": stats}
  sample = jax.jit(lambda v, z: g.apply(v, z, train=False))
  # Each sample depends on its own noise only: the same alone as in a batch.
  np.testing.assert_allclose(sample(variables, z)[:2], sample(variables, z[:2]), atol=1e-6)


@pytest.mark.parametrize(
  "overrides,message",
  [
    (dict(gan_loss="lsgan"), "--gan_loss must be one of ns, hinge, wgan_gp"),
    (dict(d_steps=0), "--d_steps must be a positive integer"),
    (dict(d_steps=3), r"--batch_size=32 must be divisible by --d_steps=3 times the device count"),
    (dict(ema_decay=1.0), r"--ema_decay must be in \[0, 1\)"),
    (dict(gp_weight=-1.0), "--gp_weight must be >= 0"),
    (dict(d_learning_rate=0.0), "--d_learning_rate must be > 0"),
    (dict(optimizer="gd"), "--optimizer=gd"),
    (dict(model="mlp_gan", gan_widths=["0"]), "--gan_widths must be a comma-separated list"),
  ],
)
def test_bad_flags(overrides, message):
  with pytest.raises(UsageError, match=message):
    families.validate(_cfg(**overrides))


def test_dcgan_needs_sides_divisible_by_four():
  with pytest.raises(UsageError, match="--model=dcgan needs image height and width divisible by 4"):
    families.get("dcgan")(_cfg(), DataSpec((30, 30, 1), 10, 100))


def test_state_holds_both_networks_optimizers_and_the_ema():
  family = families.get("dcgan")(_cfg(), SPEC)
  state = jax.eval_shape(family.init_state, jax.random.key(0))
  assert set(state.params) == set(state.opt_state) == {"generator", "discriminator"}
  assert set(state.extra) == {"batch_stats", "ema"}
  assert jax.tree.structure(state.extra["ema"]) == jax.tree.structure(state.params["generator"])


def _run(family, mesh, parallelism, state, batches):
  """Host copies of the state after each step, and the last metrics."""
  states = [state]
  step = parallel.make_train_step(family, mesh, parallelism=parallelism)
  if parallelism == "pmap":
    state = parallel.replicate_for_pmap(state)
  else:
    state = jax.device_put(state, parallel.replicated(mesh))
  for images in batches:
    local = {"image": images}
    batch = (
      parallel.pmap_batch(local) if parallelism == "pmap" else parallel.global_batch(mesh, local)
    )
    state, metrics = step(state, batch, jax.random.key(1))
    states.append(jax.device_get(parallel.unreplicate(state) if parallelism == "pmap" else state))
  if parallelism == "pmap":
    metrics = parallel.unreplicate(metrics)
  return states, jax.device_get(metrics)


@pytest.mark.slow
def test_step_on_one_device_eight_devices_and_pmap_agree():
  # The heaviest path: WGAN-GP with R1, two D steps (a scan over batch slices), BatchNorm in G.
  assert jax.device_count() == 8
  cfg = _cfg(
    model="mlp_gan",
    gan_loss="wgan_gp",
    d_steps=2,
    r1_weight=1.0,
    optimizer="sgd",
    learning_rate=0.05,
    ema_decay=0.9,
  )
  family = families.get(cfg.model)(cfg, SPEC)
  one = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  init = jax.device_get(parallel.make_init(family, one)[0](jax.random.key(0)))
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8) for _ in range(2)]
  s1, m1 = _run(family, one, "jit", init, batches)
  s8, m8 = _run(family, parallel.make_mesh(), "jit", init, batches)
  sp, mp = _run(family, parallel.make_mesh(), "pmap", init, batches)
  for other in (s8[-1], sp[-1]):  # params, optimizer states, BatchNorm statistics and EMA
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4), s1[-1], other)
  expected = {
    "d_loss",
    "g_loss",
    "d_real",
    "d_fake",
    "grad_penalty",
    "r1_penalty",
    "g_grad_norm",
    "d_grad_norm",
    "g_param_norm",
    "d_param_norm",
  }
  assert expected <= set(m1)
  for name in m1:
    np.testing.assert_allclose(m1[name], m8[name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m1[name], mp[name], rtol=1e-4, atol=1e-6)
  assert m1["grad_penalty"] > 0 and m1["r1_penalty"] > 0
  # Both networks moved, and the BatchNorm running statistics were updated.
  for net in ("generator", "discriminator"):
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), s1[0].params[net], s1[-1].params[net])
    assert max(jax.tree.leaves(moved)) > 1e-4
  stats_moved = jax.tree.map(
    lambda a, b: np.abs(a - b).max(), s1[0].extra["batch_stats"], s1[-1].extra["batch_stats"]
  )
  assert max(jax.tree.leaves(stats_moved)) > 1e-4
  # EMA with warm-up: decay min(0.9, (1 + t) / (10 + t)) after step t.
  p = [s.params["generator"] for s in s1]
  d0, d1 = 1 / 10, 2 / 11
  expected_ema = jax.tree.map(lambda a, b, c: d1 * (d0 * a + (1 - d0) * b) + (1 - d1) * c, *p)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), expected_ema, s1[-1].extra["ema"]
  )


@pytest.mark.slow
def test_feature_net_is_trained_once_cached_and_accurate(digits_feature_dir, monkeypatch):
  ds = data.load("digits")
  path = feature_net.cache_path(ds, digits_feature_dir)
  assert path.startswith(digits_feature_dir) and path.endswith(".msgpack")
  monkeypatch.setattr(feature_net, "_train", lambda *_: pytest.fail("retrained despite the cache"))
  net = feature_net.load_or_train(ds, digits_feature_dir, log=lambda _: None)
  assert net.path == path and net.test_accuracy > 0.9
  feats = net.features(net.params, data.normalize(ds.x_test[:4]))
  assert feats.shape == (4, feature_net.RECIPE["width"])
  # Other data (or another recipe) gets another file.
  other = data.Dataset("digits", ds.x_train[:-1], ds.y_train[:-1], ds.x_test, ds.y_test, 10)
  assert feature_net.cache_path(other, digits_feature_dir) != path


def test_sample_quality_evaluator_needs_samples_and_labels(capsys):
  ds = data.load("digits")
  unlabelled = data.Dataset("blobs", ds.x_train, None, ds.x_test, None, None)
  gan = types.SimpleNamespace(
    cfg=_cfg(), dataset=unlabelled, family=families.get("dcgan")(_cfg(), SPEC)
  )
  assert [e.name for e, _ in evaluators.training_schedule(gan)] == [
    "metrics",
    "likelihood",
    "images",
  ]
  assert "No sample_quality evaluation: blobs has no labels" in capsys.readouterr().out
  ae_cfg = config.make_config(model="ae_seed")
  ae = types.SimpleNamespace(cfg=ae_cfg, dataset=ds, family=families.get("ae_seed")(ae_cfg, SPEC))
  assert "sample_quality" not in [e.name for e, _ in evaluators.training_schedule(ae)]
  assert capsys.readouterr().out == ""  # a model that draws no samples skips it quietly
  with pytest.raises(UsageError, match="--eval_samples must be 0 .* or at least 10"):
    labelled = types.SimpleNamespace(cfg=_cfg(eval_samples=5), dataset=ds, family=gan.family)
    evaluators.training_schedule(labelled)


def _train(*args):
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.train", *args],
    cwd=ROOT,
    env={**os.environ},
    capture_output=True,
    text=True,
    timeout=600,
  )
  if proc.returncode != 0:
    raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc.stdout


@pytest.mark.slow
def test_dcgan_digits_end_to_end_with_resume_and_evaluate(tmp_path, digits_feature_dir):
  workdir = str(tmp_path / "run")
  common = [
    f"--flagfile={os.path.join(ROOT, 'experiments', 'configs', 'dcgan_digits.flags')}",
    f"--workdir={workdir}",
    f"--data_dir={digits_feature_dir}",
  ]
  out = _train(*common, "--num_steps=20")
  assert "Feature network for digits: test accuracy" in out and "loaded from" in out
  out = _train(*common)  # the flagfile's 40 steps: resumes at 20
  assert "Resuming dcgan on digits from step 20" in out and "step 40/40" in out

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  train = [r for r in rows if r["split"] == "train"]
  evals = [r for r in rows if r["split"] == "valid"]
  assert [r["step"] for r in train] == [10, 20, 30, 40]
  assert [r["step"] for r in evals] == [20, 40]
  adversarial = {
    "d_loss",
    "g_loss",
    "d_real",
    "d_fake",
    "grad_penalty",
    "g_grad_norm",
    "d_grad_norm",
  }
  assert all(adversarial <= set(r) for r in train)
  quality = {"fid", "kid", "precision", "recall", "fid_floor", "feature_net_acc"}
  for r in evals:
    assert quality | {"d_real_test", "d_fake_test"} <= set(r)
    assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert 0 < r["fid_floor"] < r["fid"] and r["feature_net_acc"] > 0.9
  assert evals[0]["fid_floor"] == evals[1]["fid_floor"]  # computed once, on fixed real sets
  assert os.path.exists(os.path.join(workdir, "images", "samples_0000040.png"))
  emb = np.load(os.path.join(workdir, "embeddings_test.npz"))
  assert emb["embeddings"].shape == (297, 2 * 2 * 16)  # discriminator features

  # experiments.evaluate's library call: the same sample-quality metrics into eval.json.
  # The test split is scored at the end of training, as experiments.evaluate scores it.
  test = [r for r in rows if r["split"] == "test"][-1]
  results = evaluate.evaluate_workdir(workdir)
  assert results["step"] == 40 == test["step"] and quality <= set(results)
  np.testing.assert_allclose(results["fid"], test["fid"], rtol=1e-4)
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["fid_floor"] == results["fid_floor"]
