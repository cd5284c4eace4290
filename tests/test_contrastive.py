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
from test_steps import run_steps

from dlu import config, families
from dlu.errors import UsageError
from dlu.families import DataSpec
from dlu.ops import losses, views
from dlu.runtime import parallel

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


def test_intensity_jitter_keeps_black_black_stays_in_range_and_is_monotone():
  image = jnp.asarray(np.random.default_rng(4).random((8, 8, 1)), jnp.float32).at[:2].set(0.0)
  image = image.at[2, 0, 0].set(1.0)
  key = jax.random.key(5)
  np.testing.assert_array_equal(
    views.jitter_intensity(key, image, brightness=0.0, gamma=0.0), image
  )
  order = np.argsort(np.asarray(image).ravel(), kind="stable")
  outs = [
    views.jitter_intensity(jax.random.key(k), image, brightness=0.5, gamma=0.7) for k in range(4)
  ]
  for out in outs:
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    np.testing.assert_array_equal(out[:2], 0.0)
    assert np.all(np.diff(np.asarray(out).ravel()[order]) >= 0)  # Order of intensities kept.
  assert min(float(jnp.abs(a - b).max()) for a, b in zip(outs, outs[1:])) > 0.05
  # A power alone keeps white white; views with jitter differ from those without, same key.
  np.testing.assert_allclose(
    views.jitter_intensity(key, image, brightness=0.0, gamma=0.7)[2, 0, 0], 1.0, rtol=1e-6
  )
  plain = views.random_views(key, image[None], min_scale=0.5, hflip=True)
  jittered = views.random_views(key, image[None], min_scale=0.5, hflip=True, brightness=0.5)
  assert float(jnp.abs(plain - jittered).max()) > 0.01
  np.testing.assert_array_equal(plain == 0, jittered == 0)  # Same crop: black where it was.


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


def _cluster_contrast_reference(p1, p2, t):
  k = p1.shape[1]
  c = np.concatenate([p1.T, p2.T]).astype(np.float64)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  ce = []
  for i in range(2 * k):  # -log softmax of the same cluster's column in the other view.
    partner = (i + k) % (2 * k)
    logits = np.array([c[i] @ c[j] / t for j in range(2 * k) if j != i])
    ce.append(-(c[i] @ c[partner] / t) + np.log(np.exp(logits).sum()))
  entropy = lambda m: -(m * np.log(m)).sum()
  h = (entropy(p1.mean(0)) + entropy(p2.mean(0))) / 2
  return np.mean(ce) + 2 * (np.log(k) - h), h


def test_cluster_contrast_matches_the_definition_and_its_pmap_gradient_is_the_global_one():
  rng = np.random.default_rng(6)
  softmax = lambda a: np.exp(a) / np.exp(a).sum(1, keepdims=True)
  p1, p2 = (softmax(rng.normal(size=(16, 4)) * 2).astype(np.float32) for _ in range(2))
  loss, h = losses.cluster_contrast(jnp.asarray(p1), jnp.asarray(p2), temperature=0.7)
  want_loss, want_h = _cluster_contrast_reference(p1, p2, 0.7)
  np.testing.assert_allclose([loss, h], [want_loss, want_h], rtol=1e-5)
  # Confident, balanced assignments that agree across views cost less than random ones.
  onehot = np.eye(4, dtype=np.float32)[np.arange(16) % 4] * 0.97 + 0.0075
  agree, h_agree = losses.cluster_contrast(
    jnp.asarray(onehot), jnp.asarray(onehot), temperature=0.7
  )
  assert float(agree) < float(loss) and abs(float(h_agree) - np.log(4)) < 1e-5

  # Under pmap every device gets the global value, and its gradient for its own rows (then
  # averaged over devices by the train step) is the global loss's gradient for those rows.
  global_grads = jax.grad(
    lambda a, b: losses.cluster_contrast(a, b, temperature=0.7)[0], argnums=(0, 1)
  )(jnp.asarray(p1), jnp.asarray(p2))
  fn = jax.pmap(
    jax.value_and_grad(
      lambda a, b: losses.cluster_contrast(a, b, temperature=0.7, axis_name="d")[0], argnums=(0, 1)
    ),
    axis_name="d",
  )
  values, grads = fn(p1.reshape(8, 2, 4), p2.reshape(8, 2, 4))
  np.testing.assert_allclose(values, np.full(8, float(loss)), rtol=1e-5)
  for g, want in zip(grads, global_grads):
    np.testing.assert_allclose(np.asarray(g).reshape(16, 4) / 8, want, rtol=1e-4, atol=1e-7)


# simclr_mlp with the head runs the headless path too (its encoder, views and NT-Xent loss).
@pytest.mark.parametrize("model, cluster_head", [("simclr_conv", False), ("simclr_mlp", True)])
@pytest.mark.slow
def test_one_device_and_eight_devices_agree(model, cluster_head):
  assert jax.device_count() == 8
  cfg = config.make_config(
    model=model,
    optimizer="sgd",
    learning_rate=0.1,
    widths=["32"],
    conv_channels=["4", "8"],
    latent_dim=16,
    projection_dims=["16", "8"],
    dataset="digits",
    cluster_head=cluster_head,
  )
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (SPEC.num_train, 8, 8, 1), dtype=np.uint8)
  batches = [x[rng.permutation(SPEC.num_train)[:32]] for _ in range(3)]
  one = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  p1, m1 = run_steps(cfg, one, "jit", batches)
  p8, m8 = run_steps(cfg, parallel.make_mesh(), "jit", batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p1, p8)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  family = families.get(model)(cfg, SPEC)
  # experiments.evaluate scores a head's assignments, else clusters the embeddings.
  assert (family.assignments is None) == (not cluster_head)
  fresh = family.init_params(jax.random.key(0))
  moved = jax.tree.map(lambda a, b: float(np.abs(a - np.asarray(b)).max()), p1, fresh)
  assert min(jax.tree.leaves(moved)) > 0  # Every parameter, encoder and head, is trained.
  # Under pmap each device draws its own views; the loss is still over the global batch.
  _, mp = run_steps(cfg, parallel.make_mesh(), "pmap", batches)
  loss, top1 = np.asarray(mp["loss"]), np.asarray(mp["top1"])  # [devices], equal after pmean.
  np.testing.assert_allclose(loss, loss[0])
  assert np.isfinite(loss[0]) and 0 <= top1[0] <= 1 and abs(loss[0] - float(m1["loss"])) < 0.5
  if cluster_head:  # The head is trained, and its entropy is of the global batch's assignments.
    assert "cluster_head" in p1
    assert 0 < float(m8["cluster_entropy"]) <= np.log(10) + 1e-5
    np.testing.assert_allclose(
      np.asarray(mp["cluster_entropy"]), float(m8["cluster_entropy"]), atol=0.3
    )


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(temperature=0.0), "--temperature must be > 0"),
    (dict(crop_min_scale=1.5), "--crop_min_scale is an area fraction"),
    (dict(projection_dims=["0"]), "--projection_dims must be a comma-separated list"),
    (dict(batch_size=1), "--batch_size >= 2"),
    (dict(brightness=1.0), r"--brightness must be in \[0, 1\)"),
    (dict(intensity_gamma=-0.1), "--intensity_gamma must be >= 0"),
    (dict(cluster_temperature=0.0), "--cluster_temperature must be > 0"),
  ],
)
def test_validation_names_the_flag(overrides, message):
  with pytest.raises(UsageError, match=message):
    families.validate(config.make_config(model="simclr_mlp", **overrides))


def _python(module, *args):
  out = subprocess.run(
    [sys.executable, "-m", module, *args],
    capture_output=True,
    text=True,
    env={**os.environ},
    timeout=300,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  return out


def test_cluster_head_on_unlabelled_data_needs_n_clusters():
  cfg = config.make_config(
    model="simclr_mlp", cluster_head=True, widths=["8"], latent_dim=4, projection_dims=["4"]
  )
  unlabelled = DataSpec((8, 8, 1), None, 64)
  with pytest.raises(UsageError, match="--cluster_head needs --n_clusters"):
    families.get("simclr_mlp")(cfg, unlabelled).init_params(jax.random.key(0))
  cfg = config.make_config(
    model="simclr_mlp",
    cluster_head=True,
    n_clusters=3,
    widths=["8"],
    latent_dim=4,
    projection_dims=["4"],
  )
  params = families.get("simclr_mlp")(cfg, unlabelled).init_params(jax.random.key(0))
  assert params["cluster_head"]["dense_1"]["kernel"].shape == (4, 3)


@pytest.mark.slow
def test_digits_run_learns_views_and_clusters_and_evaluates(tmp_path):
  workdir = str(tmp_path / "simclr")
  _python(
    "experiments.train", "--flagfile=experiments/configs/cc_digits.flags", f"--workdir={workdir}"
  )
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = [r for r in rows if r["split"] == "test"]
  train = [r for r in rows if r["split"] == "train"]
  assert train[-1]["loss"] < train[0]["loss"]
  # Chance of finding the partner among the 2 * 512 - 1 other views is ~0.001.
  assert evals[-1]["top1"] > 0.3
  # The cluster head: every cluster in use, both views of an image mostly in one cluster, and
  # clusters that match the classes far above chance (0.1) on the test split.
  assert train[-1]["cluster_entropy"] > 0.9 * np.log(10)
  assert evals[-1]["views_agree"] > 0.6 and evals[-1]["acc"] > 0.5
  assert os.path.exists(os.path.join(workdir, "images", "views_0000300.png"))
  _python(
    "experiments.evaluate", f"--workdir={workdir}", "--embedding_plot=pca", "--kmeans_inits=3"
  )
  result = json.load(open(os.path.join(workdir, "eval.json")))
  assert result["model"] == "simclr_mlp" and result["embedding_dim"] == 64
  assert result["clustering"] == "simclr_mlp clustering layer"
  assert result["acc"] > 0.5 and result["linear_probe_acc"] > 0.85  # Chance is 0.1.
  # k-means on the representation is kept beside the head's clusters.
  assert result["baselines"]["kmeans_on_embeddings"]["acc"] > 0.6, result["baselines"]


@pytest.mark.parametrize("model", ["simclr_conv", "ae_conv", "conv_vae"])
def test_conv_channels_the_image_cannot_halve_that_often_are_refused(model):
  cfg = config.make_config(model=model, conv_channels=["4", "4", "4", "4"], dataset="digits")
  with pytest.raises(
    UsageError, match=f"--model={model} with 4 strided layers .* divisible by 16; the data has 8x8"
  ):
    families.get(model)(cfg, SPEC).make_model()
