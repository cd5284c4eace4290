"""Anomaly scores from representations (k-NN, CSI cosine) and the deep SVDD family."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlu
from dlu import config, families
from dlu.errors import UsageError
from dlu.families import svdd
from dlu.families.base import DataSpec
from dlu.metrics import novelty
from dlu.train import loop


def _codes():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(200, 4)) + 5.0  # a cluster away from the origin
  inliers = rng.normal(size=(20, 4)) + 5.0
  outliers = rng.normal(size=(20, 4)) * 0.3 + np.array([5.0, -5.0, 5.0, -5.0])
  return train, np.concatenate([inliers, outliers])


@pytest.mark.parametrize("score", [novelty.knn_distance, novelty.csi_cosine])
def test_scores_rank_planted_outliers_above_inliers(score):
  train, codes = _codes()
  s = score(train, codes)
  assert s.shape == (40,)
  assert s[20:].min() > s[:20].max()


def test_knn_k_out_of_range_is_a_usage_error():
  train, codes = _codes()
  with pytest.raises(UsageError, match="k=500"):
    novelty.knn_distance(train, codes, k=500)


def _svdd_family():
  cfg = config.make_config(model="svdd_mlp", dataset="digits", widths=["16"], latent_dim=8)
  return families.get("svdd_mlp")(cfg, DataSpec((8, 8, 1), 10, 64, "unit"))


def test_svdd_centre_has_no_near_zero_coordinates_and_no_bias_params():
  fam = _svdd_family()
  fam._centre_inputs = np.random.default_rng(0).integers(0, 17, (64, 8, 8, 1)).astype(np.float32)
  state = fam.init_state(jax.random.key(0))
  c = np.asarray(state.extra["centre"])
  assert c.shape == (8,) and np.abs(c).min() >= svdd.SVDD_EPS
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.params)]
  assert names and not any("bias" in n for n in names)
  np.testing.assert_allclose(svdd.centre(jnp.zeros((3, 2))), [0.1, 0.1])


def test_svdd_loss_decreases():
  fam = _svdd_family()
  x = np.random.default_rng(1).uniform(size=(64, 8, 8, 1)).astype(np.float32)
  fam._centre_inputs = x
  state = fam.init_state(jax.random.key(0))
  step = jax.jit(fam.train_step)
  losses = []
  for i in range(20):
    state, m = step(state, {"image": jnp.asarray(x)}, jax.random.key(i))
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.8 * losses[0]
  assert fam.score(state, jnp.asarray(x)).shape == (64,)


@pytest.fixture(scope="module")
def svdd_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("anomaly") / "run")
  cfg = config.make_config(
    model="svdd_mlp",
    dataset="digits",
    widths=["16"],
    latent_dim=4,
    batch_size=64,
    num_steps=20,
    log_every=10,
    eval_every=20,
    checkpoint_every=20,
    evaluators=["metrics"],
    embedding_plot="none",
  )
  loop.train_and_evaluate(cfg, workdir)
  return workdir


def test_score_method_selectable_on_load_run(svdd_run):
  run = dlu.load_run(svdd_run)
  x = run.dataset.x_test[:30]
  model = run.score(x)
  knn = run.score(x, method="knn", k=3)
  cosine = run.score(x, method="cosine")
  assert model.shape == knn.shape == cosine.shape == (30,)
  assert not np.allclose(model, knn)
  step = int(run.state.step)
  assert os.path.isfile(os.path.join(svdd_run, f"train_codes_{step}.npz"))
  np.testing.assert_allclose(run.score(x, method="knn", k=3), knn)  # from the cache
  with pytest.raises(UsageError, match="--score_method='nope'"):
    run.score(x, method="nope")


@pytest.mark.slow
def test_apply_score_method(svdd_run, tmp_path):
  out = str(tmp_path / "scored.npz")
  x = dlu.load_run(svdd_run).dataset.x_test[:30]
  np.savez(tmp_path / "new.npz", x=x)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.apply",
      f"--workdir={svdd_run}",
      f"--input=npz:{tmp_path / 'new.npz'}",
      f"--output={out}",
      "--score_method=knn",
      "--score_k=3",
    ],
    cwd=root,
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  run = dlu.load_run(svdd_run)
  with np.load(out) as f:
    scores = f["score"]
  np.testing.assert_allclose(scores, run.score(x, method="knn", k=3), rtol=1e-5)


@pytest.mark.slow
def test_geom_transformations_labels_and_scores():
  from dlu.families import geom

  x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 8, 8, 1)), jnp.float32)
  views = geom.all_transforms(x)
  assert views.shape == (geom.NUM_TRANSFORMS * 3, 8, 8, 1)
  labels = geom.transform_labels(3)
  assert labels.shape == (24,) and set(np.asarray(labels).tolist()) == set(range(8))
  flat = np.asarray(views).reshape(8, 3, -1)
  for i in range(8):  # the eight views of an image are distinct
    for j in range(i):
      assert not np.allclose(flat[i, 0], flat[j, 0])
  np.testing.assert_array_equal(flat[0], np.asarray(x).reshape(3, -1))  # t=0: identity
  cfg = config.make_config(model="geom_conv", dataset="digits", conv_channels=["4", "8"])
  fam = families.get("geom_conv")(cfg, DataSpec((8, 8, 1), 10, 64, "unit"))
  state = fam.init_state(jax.random.key(0))
  assert fam.score(state, x).shape == (3,)
  step = jax.jit(fam.train_step)
  first = None
  for i in range(15):
    state, m = step(state, {"image": x}, jax.random.key(i))
    first = float(m["loss"]) if first is None else first
  assert float(m["loss"]) < first
  assert fam.eval_metrics(state, {"image": x}, None)["transform_acc"].shape == (3,)
