"""The class-conditional GAN (--conditional), labelled batches, and experiments.augment."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from PIL import Image

from dlu import config, data, families
from dlu.data import feeds
from dlu.errors import UsageError
from dlu.families import DataSpec, Family
from dlu.metrics import feature_net
from dlu.models import gan as gan_models
from dlu.runtime import parallel
from dlu.studies import few_shot, imbalance
from dlu.train import experiment

SPEC = DataSpec((8, 8, 1), 10, 512, "symmetric")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**overrides):
  base = dict(
    model="dcgan",
    conditional=True,
    dataset="digits",
    pixel_range="symmetric",
    gan_channels=4,
    latent_dim=8,
    gan_widths=["16"],
    batch_size=32,
    eval_samples=0,
  )
  return config.make_config(**{**base, **overrides})


@pytest.mark.slow
def test_labels_change_the_generator_and_the_projection_discriminator():
  g = gan_models.DCGANGenerator((8, 8, 1), 8, num_classes=10)
  d = gan_models.DCGANDiscriminator(8, num_classes=10)
  z = jnp.tile(jax.random.normal(jax.random.key(0), (1, 5)), (3, 1))  # one noise, three classes
  y = jnp.array([0, 3, 9])
  g_vars = jax.jit(lambda k: g.init(k, z, y, train=False))(jax.random.key(1))
  assert g_vars["params"]["label_embed"]["embedding"].shape == (10, 5)
  x = jax.jit(lambda v, z, y: g.apply(v, z, y, train=False))(g_vars, z, y)
  assert x.shape == (3, 8, 8, 1)
  assert (
    np.abs(np.asarray(x[0] - x[1])).max() > 1e-3 and np.abs(np.asarray(x[1] - x[2])).max() > 1e-3
  )
  with pytest.raises(ValueError, match="needs labels"):
    g.apply(g_vars, z, train=False)

  # logit(x, y) = linear(phi(x)) + <embed(y), phi(x)>.
  d_vars = jax.jit(lambda k: d.init(k, x, y))(jax.random.key(2))
  params = d_vars["params"]
  logit, phi = jax.jit(lambda v, x, y: (d.apply(v, x, y), d.apply(v, x, method="embed")))(
    d_vars, x, y
  )
  expected = (
    (phi @ params["logit"]["kernel"])[:, 0]
    + params["logit"]["bias"][0]
    + jnp.sum(params["class_embed"]["embedding"][y] * phi, axis=-1)
  )
  np.testing.assert_allclose(logit, expected, rtol=1e-5, atol=1e-6)
  assert params["class_embed"]["embedding"].shape == (10, phi.shape[-1])
  # The class term is not zero at initialisation: labels already change the score.
  assert np.abs(np.asarray(jnp.sum(params["class_embed"]["embedding"][y] * phi, -1))).min() > 0


@pytest.mark.parametrize("model", ["dcgan", "mlp_gan"])
def test_only_conditional_networks_have_label_parameters(model):
  init = lambda cfg: jax.eval_shape(families.get(model)(cfg, SPEC).init_state, jax.random.key(0))
  state = init(_cfg(model=model, conditional=False))
  assert "label_embed" not in state.params["generator"]
  assert "class_embed" not in state.params["discriminator"]
  conditional = init(_cfg(model=model))
  assert conditional.params["generator"]["label_embed"]["embedding"].shape == (10, 8)
  assert "label_embed" in conditional.extra["ema"]
  assert conditional.params["discriminator"]["class_embed"]["embedding"].shape[0] == 10
  # The first generator layer takes the label's embedding beside the noise.
  first = "dense" if model == "dcgan" else "dense_0"
  assert state.params["generator"][first]["kernel"].shape[0] == 8
  assert conditional.params["generator"][first]["kernel"].shape[0] == 16


def test_conditional_on_unlabelled_data_fails_early(tmp_path):
  with pytest.raises(UsageError, match="--conditional needs a labelled dataset"):
    families.get("dcgan")(_cfg(), DataSpec((8, 8, 1), None, 100))
  x = data.load("digits").x_train[:64]
  path = tmp_path / "unlabelled.npz"
  np.savez(path, x=x)
  with pytest.raises(UsageError, match="--conditional"):
    experiment.build(_cfg(dataset=f"npz:{path}"), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


class _LabelProbe(Family):
  """Returns each step's labels and images as its metrics."""

  needs_label = True

  def train_step(self, state, batch, rng, *, axis_name=None):
    return state + 1, {"label": batch["label"], "image": batch["image"]}


@pytest.mark.parametrize("n", [1, 3])
def test_feeds_put_the_rows_labels_in_the_batch(n):
  ds = data.load("digits")
  mesh = parallel.make_mesh()
  sampler = data.BatchSampler(len(ds.x_train), 64, seed=3)
  probe = _LabelProbe(config.make_config(), SPEC)
  step = jax.jit(
    probe.train_step, in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh), None)
  )
  feed = feeds.make_feed(
    probe,
    mesh,
    ds.x_train,
    sampler,
    step,
    jax.random.key(0),
    y_train=ds.y_train,
    steps_per_dispatch=n,
  )
  others = [
    feeds.make_feed(
      probe,
      mesh,
      ds.x_train,
      sampler,
      step,
      jax.random.key(0),
      y_train=ds.y_train,
      input_pipeline=pipeline,
      start_step=5,
      num_steps=6,
    )
    for pipeline in (("host", "stream") if n == 1 else ())
  ]
  rows = sampler.global_indices(5 + n - 1)  # a dispatch returns its last step's metrics
  for f in (feed, *others):
    state, batch = f(jnp.zeros((), jnp.int32), 5, n)
    assert int(state) == n
    assert batch["label"].dtype == jnp.int32
    np.testing.assert_array_equal(batch["label"], ds.y_train[rows])
    np.testing.assert_array_equal(batch["image"], ds.x_train[rows])
    f.close()
  with pytest.raises(UsageError, match="--conditional"):
    feeds.make_feed(probe, mesh, ds.x_train, sampler, step, jax.random.key(0))


def _run(step, mesh, state, batches):
  state = jax.device_put(state, parallel.replicated(mesh))
  for local in batches:
    state, metrics = step(state, parallel.global_batch(mesh, local), jax.random.key(1))
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.slow
def test_conditional_step_on_one_device_and_eight_devices_agree():
  # Two D steps: the labels are sliced with the images; on 8 devices each holds its rows' labels.
  cfg = _cfg(d_steps=2, optimizer="sgd", learning_rate=0.05, ema_decay=0.9)
  family = families.get(cfg.model)(cfg, SPEC)
  one, eight = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,)), parallel.make_mesh()
  init = jax.device_get(parallel.make_init(family, one)[0](jax.random.key(0)))
  rng = np.random.default_rng(0)
  batches = [
    {
      "image": rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8),
      "label": rng.integers(0, 10, 32).astype(np.int32),
    }
    for _ in range(2)
  ]
  step_one = parallel.make_train_step(family, one)
  s1, m1 = _run(step_one, one, init, batches)
  s8, m8 = _run(parallel.make_train_step(family, eight), eight, init, batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4), s1, s8)
  for name in m1:
    np.testing.assert_allclose(m1[name], m8[name], rtol=1e-4, atol=1e-6)
  # The class embeddings learn: both networks' label parameters moved.
  assert (
    np.abs(
      s1.params["generator"]["label_embed"]["embedding"]
      - init.params["generator"]["label_embed"]["embedding"]
    ).max()
    > 1e-4
  )
  assert (
    np.abs(
      s1.params["discriminator"]["class_embed"]["embedding"]
      - init.params["discriminator"]["class_embed"]["embedding"]
    ).max()
    > 1e-4
  )
  # The same images with other labels give another step.
  relabelled = [{**b, "label": (b["label"] + 1) % 10} for b in batches]
  other, _ = _run(step_one, one, init, relabelled)
  assert not np.allclose(
    other.params["generator"]["dense"]["kernel"], s1.params["generator"]["dense"]["kernel"]
  )


def test_balanced_labels():
  family = families.get("dcgan")(_cfg(), SPEC)
  np.testing.assert_array_equal(family.balanced_labels(12, 5), [5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6])
  assert families.get("dcgan")(_cfg(conditional=False), SPEC).balanced_labels(4) is None


def _subprocess(module, *args):
  """Runs `python -m module args` on one CPU device (the steps' data parallelism is tested
  above; one device compiles and runs these small programs faster)."""
  xla_flags = " ".join(
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  )
  proc = subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env={**os.environ, "XLA_FLAGS": xla_flags},
    capture_output=True,
    text=True,
    timeout=600,
  )
  if proc.returncode != 0:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc.stdout


#: The imbalanced split the module's GAN trains on: 4:1 between class 0 and class 9.
CLASS_BALANCE = "longtail:4"


@pytest.fixture(scope="module")
def cdcgan_run(tmp_path_factory, digits_feature_dir):
  """The cdcgan_digits.flags run on an imbalanced split (--class_balance), trained once for
  this module: experiments.imbalance needs one, and experiments.augment works with any."""
  workdir = str(tmp_path_factory.mktemp("cdcgan") / "run")
  flagfile = os.path.join(ROOT, "experiments", "configs", "cdcgan_digits.flags")
  _subprocess(
    "experiments.train",
    f"--flagfile={flagfile}",
    f"--workdir={workdir}",
    f"--data_dir={digits_feature_dir}",
    f"--class_balance={CLASS_BALANCE}",
  )
  return workdir


@pytest.mark.slow
def test_cdcgan_digits_samples_show_the_requested_classes(cdcgan_run, digits_feature_dir):
  with open(os.path.join(cdcgan_run, "metrics.jsonl")) as f:
    (final,) = [r for r in map(json.loads, f) if r["split"] == "test"]
  assert final["step"] == 300
  assert {"fid", "kid", "precision", "recall", "d_real_test", "d_fake_test"} <= set(final)
  grid = Image.open(os.path.join(cdcgan_run, "images", "samples_by_class_0000300.png"))
  assert grid.size == (8 * 33 + 1, 10 * 33 + 1)  # 8 columns, 10 classes; 8x8 shown at 32x32

  x, y = few_shot.conditional_samples(cdcgan_run, 30, seed=1)
  assert x.shape == (300, 8, 8, 1) and x.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(y), np.full(10, 30))
  ds = data.load("digits")
  net = feature_net.load_or_train(ds, digits_feature_dir, log=lambda _: None)
  # A classifier of real digits recognises the requested digit (0.97-1.0 measured; chance 0.1).
  assert feature_net.accuracy(net.model, net.params, x, y) > 0.6


@pytest.mark.slow
def test_augment_end_to_end(cdcgan_run):
  out = _subprocess(
    "experiments.augment",
    f"--workdir={cdcgan_run}",
    "--real_per_class=5,10",
    "--synthetic_per_class=20",
    "--seeds=2",
    "--classifier_steps=30",
  )
  assert "synthetic only (TSTR" in out and "augment.json" in out
  with open(os.path.join(cdcgan_run, "augment.json")) as f:
    results = json.load(f)
  assert set(results) == {
    "workdir",
    "model",
    "dataset",
    "gan_step",
    "num_classes",
    "settings",
    "per_k",
    "tstr",
  }
  assert results["gan_step"] == 300 and results["settings"]["real_per_class"] == [5, 10]
  assert set(results["per_k"]) == {"5", "10"}
  for r in list(results["per_k"].values()) + [results["tstr"]]:
    summaries = [r["real"], r["real_plus_synthetic"]] if "real" in r else [r]
    for s in summaries:
      assert len(s["per_seed"]) == 2 and 0 <= s["mean"] <= 1 and s["std"] >= 0
      np.testing.assert_allclose(s["mean"], np.mean(s["per_seed"]))
  r = results["per_k"]["5"]
  np.testing.assert_allclose(r["gain"], r["real_plus_synthetic"]["mean"] - r["real"]["mean"])
  assert results["tstr"]["mean"] > 0.2
  with Image.open(os.path.join(cdcgan_run, "augment.png")) as png:
    assert png.size[0] > 300


@pytest.mark.slow
def test_augment_checks_its_workdir_and_k(cdcgan_run, tmp_path):
  with pytest.raises(UsageError, match="not a directory"):
    few_shot.load_conditional_gan(str(tmp_path / "missing"))
  with open(tmp_path / "flags.txt", "w") as f:
    f.write(_cfg(conditional=False).to_flagfile())
  with pytest.raises(UsageError, match="without --conditional"):
    few_shot.load_conditional_gan(str(tmp_path))
  exp, state = few_shot.load_conditional_gan(cdcgan_run)
  smallest = int(np.bincount(exp.dataset.y_train).min())
  with pytest.raises(UsageError, match=f"--real_per_class values must be in 1..{smallest}"):
    few_shot.measure(
      exp,
      state,
      real_per_class=[10, smallest + 1],
      synthetic_per_class=1,
      seeds=1,
      steps=1,
      batch_size=8,
      learning_rate=1e-3,
    )
  # Nested subsets: a smaller k's rows are among a larger one's, k of each class.
  small, large = (few_shot.few_per_class(exp.dataset.y_train, k, 10, seed=0) for k in (3, 7))
  assert set(small) <= set(large)
  np.testing.assert_array_equal(np.bincount(exp.dataset.y_train[large]), np.full(10, 7))


@pytest.mark.slow
def test_imbalance_end_to_end(cdcgan_run):
  out = _subprocess(
    "experiments.imbalance",
    f"--workdir={cdcgan_run}",
    "--seeds=2",
    "--classifier_steps=20",
    "--fid_per_class=20",
  )
  assert "imbalance.json" in out and "class-wise FID" in out
  with open(os.path.join(cdcgan_run, "imbalance.json")) as f:
    results = json.load(f)
  # The classifiers trained on the GAN's own imbalanced split, and were scored on the test split.
  counts = np.bincount(experiment.restore_trained(cdcgan_run)[0].dataset.y_train, minlength=10)
  assert results["train_counts"] == counts.tolist() and results["class_balance"] == CLASS_BALANCE
  assert (
    results["imbalance_ratio"] == pytest.approx(counts[0] / counts[9]) and counts[0] > counts[9]
  )
  assert set(results["methods"]) == set(imbalance.METHODS)
  for method in results["methods"].values():
    for name in ("accuracy", "balanced_accuracy", "worst_class_recall"):
      s = method[name]
      assert len(s["per_seed"]) == 2 and 0 <= s["mean"] <= 1 and s["std"] >= 0
      np.testing.assert_allclose(s["mean"], np.mean(s["per_seed"]))
    assert method["worst_class_recall"]["mean"] <= method["balanced_accuracy"]["mean"]
  fid = results["classwise_fid"]
  assert [c["class"] for c in fid] == list(range(10)) and all(c["fid"] > 0 for c in fid)
  np.testing.assert_allclose(sum(c["share"] for c in fid), 1.0)
  with Image.open(os.path.join(cdcgan_run, "imbalance.png")) as png:
    assert png.size[0] > 600


def test_imbalance_rebalancing_sets():
  y = np.array([0] * 6 + [1] * 3 + [2] * 1)
  rows = imbalance.oversample(y, 3, seed=0)
  np.testing.assert_array_equal(np.bincount(y[rows]), [6, 6, 6])
  assert set(range(10)) <= set(rows.tolist())  # every real example kept
  np.testing.assert_array_equal(rows, imbalance.oversample(y, 3, seed=0))
  np.testing.assert_array_equal(imbalance.fill_labels(y, 3), [1, 1, 1, 2, 2, 2, 2, 2])
  got = imbalance.scores(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 0, 0, 0]), 3)
  assert got == pytest.approx(
    {"accuracy": 0.5, "balanced_accuracy": 0.5, "worst_class_recall": 0.0}
  )


def test_imbalance_needs_a_gan_trained_on_an_imbalanced_split(tmp_path):
  with open(tmp_path / "flags.txt", "w") as f:
    f.write(_cfg().to_flagfile())
  with pytest.raises(UsageError, match="trained on the whole training split"):
    imbalance.load_imbalanced_gan(str(tmp_path))
