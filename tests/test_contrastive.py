"""SimCLR: random views, the NT-Xent loss (also over pmap's global batch), the step on 1 and
8 devices, validation, and a digits run end to end through experiments.evaluate."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from dlu import families, flags as dlu_flags, losses, parallel, views
from dlu.errors import UsageError
from dlu.families import DataSpec
from test_steps import run_steps

SPEC = DataSpec((8, 8, 1), 10, 64)


def test_crop_of_the_whole_image_is_the_image_and_a_quadrant_fills_the_view():
  image = jnp.asarray(np.random.default_rng(0).random((8, 8, 1)), jnp.float32)
  whole = views.crop_and_resize(image, jnp.array([0.0, 0.0, 8.0, 8.0]))
  np.testing.assert_allclose(whole, image, atol=1e-6)
  quadrants = jnp.zeros((8, 8, 1)).at[4:, :4].set(1.0)  # Bottom-left quadrant white.
  view = views.crop_and_resize(quadrants, jnp.array([4.0, 0.0, 4.0, 4.0]))
  np.testing.assert_allclose(view[1:-1, 1:-1], 1.0, atol=1e-6)  # Edges blend with the border.


def test_random_views_differ_by_key_and_stay_in_range():
  images = jnp.asarray(np.random.default_rng(1).random((16, 8, 8, 1)), jnp.float32)
  a = views.random_views(jax.random.key(0), images, min_scale=0.5, hflip=True)
  b = views.random_views(jax.random.key(1), images, min_scale=0.5, hflip=True)
  assert a.shape == images.shape
  assert float(jnp.abs(a - b).max()) > 0.1
  assert float(a.min()) >= -1e-6 and float(a.max()) <= 1 + 1e-6
  box = views.random_box(jax.random.key(2), (8, 8), 0.5)
  top, left, height, width = map(float, box)
  assert 0 <= top <= 8 - height + 1e-6 and 0 <= left <= 8 - width + 1e-6
  assert 0.5 * 64 * 0.74 <= height * width <= 64 + 1e-4  # Area >= min_scale (less side clipping).


def _nt_xent_reference(z1, z2, t):
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  out = []
  for i in range(2 * n):  # -log softmax of the partner among every other view.
    partner = (i + n) % (2 * n)
    logits = np.array([z[i] @ z[j] / t for j in range(2 * n) if j != i])
    out.append(-(z[i] @ z[partner] / t) + np.log(np.exp(logits).sum()))
  return np.array(out)


def test_nt_xent_matches_the_definition_and_pmap_sees_the_global_batch():
  rng = np.random.default_rng(3)
  z1, z2 = rng.normal(size=(16, 5)).astype(np.float32), rng.normal(size=(16, 5)).astype(np.float32)
  loss, top1 = losses.nt_xent(jnp.asarray(z1), jnp.asarray(z2), temperature=0.5)
  np.testing.assert_allclose(loss, _nt_xent_reference(z1, z2, 0.5), rtol=1e-5)
  assert set(np.unique(top1)) <= {0.0, 1.0}
  # A partner equal to its view and far from every other view is found first.
  _, top1 = losses.nt_xent(jnp.asarray(z1), jnp.asarray(z1), temperature=0.01)
  assert float(top1.mean()) == 1.0

  fn = jax.pmap(lambda a, b: losses.nt_xent(a, b, temperature=0.5, axis_name="d")[0], axis_name="d")
  per_device = np.asarray(fn(z1.reshape(8, 2, 5), z2.reshape(8, 2, 5)))  # [8, 2 * 2]
  full = np.asarray(loss).reshape(2, 8, 2)  # [view, device, row]
  np.testing.assert_allclose(per_device.reshape(8, 2, 2), full.transpose(1, 0, 2), rtol=1e-5)


@pytest.mark.parametrize("model", ["simclr_mlp", "simclr_conv"])
def test_one_device_and_eight_devices_agree(model):
  assert jax.device_count() == 8
  cfg = dlu_flags.make_config(model=model, optimizer="sgd", learning_rate=0.1, widths=["32"],
                              conv_channels=["4", "8"], latent_dim=16, projection_dims=["16", "8"],
                              dataset="digits")
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (SPEC.num_train, 8, 8, 1), dtype=np.uint8)
  batches = [x[rng.permutation(SPEC.num_train)[:32]] for _ in range(3)]
  one = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  p1, m1 = run_steps(cfg, one, "jit", batches)
  p8, m8 = run_steps(cfg, parallel.make_mesh(), "jit", batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p1, p8)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  fresh = families.get(model)(cfg, SPEC).init_params(jax.random.key(0))
  moved = jax.tree.map(lambda a, b: float(np.abs(a - np.asarray(b)).max()), p1, fresh)
  assert min(jax.tree.leaves(moved)) > 0  # Every parameter, encoder and head, is trained.
  # Under pmap each device draws its own views; the loss is still over the global batch.
  _, mp = run_steps(cfg, parallel.make_mesh(), "pmap", batches)
  loss, top1 = np.asarray(mp["loss"]), np.asarray(mp["top1"])  # [devices], equal after pmean.
  np.testing.assert_allclose(loss, loss[0])
  assert np.isfinite(loss[0]) and 0 <= top1[0] <= 1 and abs(loss[0] - float(m1["loss"])) < 0.5


@pytest.mark.parametrize("overrides, message", [
    (dict(temperature=0.0), "--temperature must be > 0"),
    (dict(crop_min_scale=1.5), "--crop_min_scale is an area fraction"),
    (dict(projection_dims=["0"]), "--projection_dims must be a comma-separated list"),
    (dict(batch_size=1), "--batch_size >= 2"),
])
def test_validation_names_the_flag(overrides, message):
  with pytest.raises(UsageError, match=message):
    dlu_flags.validate(dlu_flags.make_config(model="simclr_mlp", **overrides))


def _python(module, *args):
  out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                       env={**os.environ}, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  return out


@pytest.mark.slow
def test_digits_run_learns_views_and_evaluates(tmp_path):
  workdir = str(tmp_path / "simclr")
  _python("experiments.train", "--flagfile=experiments/configs/simclr_digits.flags",
          f"--workdir={workdir}")
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = [r for r in rows if r["split"] == "eval"]
  train = [r for r in rows if r["split"] == "train"]
  assert train[-1]["loss"] < train[0]["loss"]
  # Chance of finding the partner among the 2 * 512 - 1 other views is ~0.001.
  assert evals[-1]["top1"] > 0.3
  assert os.path.exists(os.path.join(workdir, "images", "views_0000300.png"))
  _python("experiments.evaluate", f"--workdir={workdir}", "--embedding_plot=pca",
          "--kmeans_inits=3")
  result = json.load(open(os.path.join(workdir, "eval.json")))
  assert result["model"] == "simclr_mlp" and result["embedding_dim"] == 64
  assert result["acc"] > 0.6 and result["linear_probe_acc"] > 0.85  # Chance is 0.1.


@pytest.mark.parametrize("model", ["simclr_conv", "ae_conv", "conv_vae"])
def test_conv_channels_the_image_cannot_halve_that_often_are_refused(model):
  cfg = dlu_flags.make_config(model=model, conv_channels=["4", "4", "4", "4"], dataset="digits")
  with pytest.raises(UsageError, match=f"--model={model} with 4 strided layers .* divisible by 16; "
                                       "the data has 8x8"):
    families.get(model)(cfg, SPEC).make_model()
