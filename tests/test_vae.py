"""The VAE family: modules, flags, the bounds on a trained tiny model, data parallelism, end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh

from dlu import config, families
from dlu.errors import UsageError
from dlu.families import DataSpec
from dlu.families.vae import samples_per_chunk
from dlu.models.vae import VAE
from dlu.ops import likelihoods
from dlu.runtime import batched_eval, parallel
from dlu.train import experiment, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE_DIGITS = os.path.join(ROOT, "experiments", "configs", "vae_digits.flags")
SPEC = DataSpec((8, 8, 1), 10, 512)


@pytest.mark.parametrize(
  "architecture,shape", [("mlp", (28, 28, 1)), ("conv", (28, 28, 1)), ("conv", (32, 32, 3))]
)
def test_vae_module_shapes(architecture, shape):
  model = VAE(shape, latent_dim=5, architecture=architecture, widths=(16,), channels=(4, 8))
  x = jnp.ones((2,) + shape)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only: no compilation
  out, mean, log_var = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (2,) + shape and mean.shape == log_var.shape == (2, 5)
  decode = lambda v, z: model.apply(v, z, method="decode")
  assert jax.eval_shape(decode, variables, jnp.zeros((3, 2, 5))).shape == (3, 2) + shape
  assert "pixel_log_std" not in variables["params"]


def test_learned_variance_is_one_parameter_per_pixel():
  model = VAE((8, 8, 1), latent_dim=2, widths=(16,), learn_variance=True)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8, 8, 1)))["params"]
  assert params["pixel_log_std"].shape == (8, 8, 1)


@pytest.mark.parametrize(
  "overrides,message",
  [
    (
      dict(likelihood="bernoulli", pixel_range="symmetric"),
      "--likelihood=bernoulli needs --pixel_range=unit",
    ),
    (dict(likelihood="gaussian"), "--binarize=dynamic makes binary images"),
    (dict(likelihood="gaussian", binarize="none", gaussian_std=0.0), "--gaussian_std must be > 0"),
    (dict(learn_variance=True), "--learn_variance needs --likelihood=gaussian"),
    (dict(objective="iwae", beta=4.0), "--objective=iwae trains a bound"),
    (dict(train_samples=0), "--train_samples must be a positive integer"),
    (dict(iwae_samples=0), "--iwae_samples must be a positive integer"),
    (dict(beta=-1.0), "--beta must be >= 0"),
    (dict(kl_warmup_steps=-1), "--kl_warmup_steps must be >= 0"),
    (dict(latent_dim=0), "--latent_dim must be a positive integer"),
    (dict(model="conv_vae", conv_channels=["x"]), "--conv_channels must be a comma-separated list"),
  ],
)
def test_validation_names_the_flag(overrides, message):
  with pytest.raises(UsageError, match=message.replace("(", r"\(")):
    families.validate(config.make_config(**{"model": "vae", **overrides}))


def test_conv_vae_needs_divisible_image_sizes():
  cfg = config.make_config(model="conv_vae", conv_channels=["4", "8", "16"])
  with pytest.raises(UsageError, match="needs image height and width divisible by 8"):
    families.get("conv_vae")(cfg, DataSpec((28, 28, 1), 10, 100)).init_state(jax.random.key(0))


def test_kl_warmup_ramps_linearly_to_beta():
  family = families.get("vae")(config.make_config(model="vae", beta=2.0, kl_warmup_steps=100), SPEC)
  weights = [float(family.kl_weight(jnp.int32(s))) for s in (0, 50, 100, 1000)]
  np.testing.assert_allclose(weights, [0.0, 1.0, 2.0, 2.0])
  plain = families.get("vae")(config.make_config(model="vae", beta=2.0), SPEC)
  assert float(plain.kl_weight(jnp.int32(0))) == 2.0


def test_samples_per_chunk_divides_and_bounds_the_decodes():
  assert samples_per_chunk(1000, 1000, 4096) == 4
  assert samples_per_chunk(1000, 10, 4096) == 250  # 409 would not divide 1000
  assert samples_per_chunk(7, 1000, 10) == 1  # never 0, even over the budget
  assert samples_per_chunk(5, 8, 1_000_000) == 5


def _run_steps(cfg, mesh, batches):
  family = families.get(cfg.model)(cfg, SPEC)
  state = parallel.make_init(family, mesh)[0](jax.random.key(0))
  step = parallel.make_train_step(family, mesh)
  history = []
  for images in batches:
    state, metrics = step(state, parallel.global_batch(mesh, {"image": images}), jax.random.key(1))
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history


@pytest.mark.parametrize(
  "overrides",
  [
    dict(
      model="vae", likelihood="gaussian", binarize="none", learn_variance=True, kl_warmup_steps=2
    ),
    dict(model="vae", objective="iwae", train_samples=2),
  ],
)
@pytest.mark.slow
def test_vae_step_on_eight_devices_equals_one(overrides):
  assert jax.device_count() == 8
  cfg = config.make_config(
    **overrides,
    optimizer="sgd",
    learning_rate=0.01,
    widths=["16"],
    latent_dim=3,
    conv_channels=["4", "8"],
    dataset="digits",
  )
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8) for _ in range(3)]
  one = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  p1, m1 = _run_steps(cfg, one, batches)
  p8, m8 = _run_steps(cfg, parallel.make_mesh(), batches)
  # The noise (binarisation, reparameterisation) is drawn for the global batch: the same on 8.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1, p8)
  for name in ("loss", "elbo", "recon", "kl", "kl_weight"):
    np.testing.assert_allclose(m1[-1][name], m8[-1][name], rtol=1e-5, err_msg=name)
  if overrides.get("kl_warmup_steps"):
    assert [m["kl_weight"] for m in m1] == [0.0, 0.5, 1.0]
    assert m1[-1]["loss"] == pytest.approx(-m1[-1]["elbo"], rel=1e-6)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_conv_vae_functions_trace(likelihood):
  """Shapes through every jitted function of conv_vae, without compiling them (XLA:CPU convs are slow)."""
  cfg = config.make_config(
    model="conv_vae",
    conv_channels=["4", "8"],
    latent_dim=2,
    objective="iwae",
    train_samples=3,
    iwae_samples=6,
    iwae_chunk=16,
    likelihood=likelihood,
    learn_variance=likelihood == "gaussian",
    binarize="dynamic" if likelihood == "bernoulli" else "none",
  )
  family = families.get("conv_vae")(cfg, SPEC)
  rng = jax.random.key(0)
  state = jax.eval_shape(family.init_state, rng)
  images = jax.ShapeDtypeStruct((8, 8, 8, 1), jnp.uint8)
  new_state, metrics = jax.eval_shape(family.train_step, state, {"image": images}, rng)
  assert jax.tree.map(lambda a: a.shape, new_state.params) == jax.tree.map(
    lambda a: a.shape, state.params
  )
  assert {"loss", "elbo", "recon", "kl", "kl_weight"} <= set(metrics)
  assert jax.eval_shape(family.iwae_bound, state, images, rng).shape == (8,)
  assert jax.eval_shape(family.posterior_mean, state, images, rng).shape == (8, 2)
  grids = jax.eval_shape(family.images, state, {"image": images}, rng)
  assert grids["manifold"].shape == (15, 15, 8, 8, 1) and grids["samples"].shape == (1, 8, 8, 8, 1)


def test_the_step_draws_new_noise_each_step():
  cfg = config.make_config(
    model="vae", widths=["8"], latent_dim=2, optimizer="sgd", learning_rate=1e-9
  )
  one = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  _, history = _run_steps(cfg, one, [np.full((8, 8, 8, 1), 128, np.uint8)] * 3)
  # The same batch and (nearly) the same parameters: only the noise differs.
  assert len({float(m["loss"]) for m in history}) == 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny VAE trained 400 steps on digits, its experiment (data, mesh, eval context)."""
  cfg = config.config_from_flagfile(VAE_DIGITS, num_steps=400)
  exp = experiment.build(cfg, str(tmp_path_factory.mktemp("vae")))
  state = parallel.make_init(exp.family, exp.mesh)[0](exp.init_rng)
  step = parallel.make_train_step(exp.family, exp.mesh)
  window = parallel.DispatchWindow()
  for s in range(cfg.num_steps):
    batch = parallel.global_batch(exp.mesh, {"image": exp.dataset.x_train[exp.sampler.indices(s)]})
    state, metrics = step(state, batch, exp.train_rng)
    window.push(metrics)
  return exp, state


def _with_iwae_samples(exp, k):
  return families.get("vae")(exp.cfg.replace(iwae_samples=k), exp.spec)


@pytest.mark.slow
def test_elbo_equals_the_iwae_bound_at_k1(trained):
  exp, state = trained
  x, eval_metrics = exp.dataset.x_test, jax.jit(exp.family.eval_metrics)
  elbo = np.concatenate(
    [  # per test image, closed-form KL, the eval's binarisation
      jax.device_get(
        eval_metrics(state, {"image": images}, jax.random.fold_in(exp.ctx.rng, i))["elbo"]
      )
      for i, (images, _) in enumerate(batched_eval.padded_batches(x, exp.ctx.batch_size))
    ]
  )[: len(x)]
  family = _with_iwae_samples(exp, 1)
  bound = batched_eval.per_example(
    jax.jit(family.iwae_bound),
    state,
    x,
    mesh=exp.mesh,
    batch_size=exp.ctx.batch_size,
    rng=exp.ctx.rng,
  )
  # Both are unbiased one-sample estimates of each image's ELBO (on the same binary image).
  diff = bound - elbo
  assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff))
  assert family.final_metrics(state, exp.dataset, exp.ctx)["nll_iwae"] == pytest.approx(
    -bound.mean(), rel=1e-5
  )
  # --iwae_examples scores the first test images in a smaller batch, binarised as before.
  first = families.get("vae")(exp.cfg.replace(iwae_samples=1, iwae_examples=40), exp.spec)
  assert first.final_metrics(state, exp.dataset, exp.ctx)["nll_iwae"] == pytest.approx(
    -bound[:40].mean(), rel=1e-5
  )


@pytest.mark.slow
def test_the_iwae_bound_rises_with_k_on_a_trained_model(trained):
  exp, state = trained
  nll = {
    k: _with_iwae_samples(exp, k).final_metrics(state, exp.dataset, exp.ctx)["nll_iwae"]
    for k in (1, 10, 100)
  }
  assert nll[1] > nll[10] > nll[100]
  # Small chunks (more passes) give the same bound: chunking only bounds memory.
  family = families.get("vae")(exp.cfg.replace(iwae_samples=100, iwae_chunk=1), exp.spec)
  assert family.final_metrics(state, exp.dataset, exp.ctx)["nll_iwae"] == pytest.approx(
    nll[100], abs=0.5
  )


@pytest.mark.slow
def test_images_and_active_units(trained):
  exp, state = trained
  batch = {"image": exp.dataset.x_test[:32]}
  grids = jax.device_get(jax.jit(exp.family.images)(state, batch, exp.ctx.rng))
  assert grids["samples"].shape == (4, 8, 8, 8, 1)
  assert grids["interpolations"].shape == (8, 10, 8, 8, 1)
  assert grids["manifold"].shape == (15, 15, 8, 8, 1)  # a 2-d latent
  assert grids["reconstructions"].shape == (8, 8, 8, 8, 1)
  assert all(0 <= g.min() and g.max() <= 1 for g in grids.values())
  again = jax.device_get(jax.jit(exp.family.images)(state, batch, exp.ctx.rng))
  np.testing.assert_array_equal(grids["samples"], again["samples"])  # fixed noise
  units = exp.family.split_metrics(state, exp.dataset, exp.ctx)["active_units"]
  assert units in (1, 2)
  emb = exp.family.embed(state, exp.dataset.x_test[:5])
  assert emb.shape == (5, 2)


def _params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  return ocp.StandardCheckpointer().restore(os.path.abspath(path))["params"]


@pytest.mark.slow
def test_vae_digits_end_to_end_with_resume_and_evaluate(tmp_path):
  split, straight = str(tmp_path / "split"), str(tmp_path / "straight")
  cfg = config.config_from_flagfile(VAE_DIGITS, num_steps=100, eval_every=50, checkpoint_every=50)
  loop.train_and_evaluate(cfg.replace(num_steps=50), split)
  loop.train_and_evaluate(cfg, split)  # resumes at 50
  loop.train_and_evaluate(cfg.replace(eval_every=100), straight)
  # The resumed run drew the same batches and the same noise as the uninterrupted one.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    _params(split, 100),
    _params(straight, 100),
  )

  with open(os.path.join(split, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if r["split"] == "valid"]
  assert [r["step"] for r in evals] == [50, 100]
  for r in evals:
    assert {"elbo", "recon", "kl", "active_units"} <= set(r)
    assert r["elbo"] < 0 < r["recon"] and r["kl"] > 0
    assert r["elbo"] == pytest.approx(-(r["recon"] + r["kl"]), rel=1e-5)
  # The end-of-run bounds (the likelihood evaluator) score the test split alone.
  tests = [r for r in rows if r["split"] == "test"]
  assert [r["step"] for r in tests] == [50, 100] and "nll_iwae" not in evals[-1]
  final = tests[-1]
  assert final["nll_iwae"] <= -final["elbo"] + 1.0 and final["bits_per_dim"] > 0
  train = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train] == [50, 100]
  assert {"loss", "elbo", "recon", "kl", "kl_weight"} <= set(train[-1])
  for name in ("samples", "interpolations", "manifold", "reconstructions"):
    assert os.path.exists(os.path.join(split, "images", f"{name}_0000100.png")), name

  # experiments.evaluate scores the same binarised test images with the same noise.
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.evaluate", f"--workdir={split}"],
    cwd=ROOT,
    env={**os.environ},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, f"evaluate failed:\n{proc.stdout}\n{proc.stderr}"
  with open(os.path.join(split, "eval.json")) as f:
    results = json.load(f)
  # The test split is scored at the end of training (of each command: 50, then 100).
  assert results["step"] == 100 and results["model"] == "vae"
  assert results["nll_iwae"] == pytest.approx(final["nll_iwae"], rel=1e-5)
  assert results["elbo"] == pytest.approx(final["elbo"], rel=1e-5)


@pytest.mark.parametrize(
  "name", ["vae_fashion_mnist", "conv_vae_fashion_mnist", "beta_vae_fashion_mnist", "vae_digits"]
)
def test_vae_configs_are_valid(name):
  cfg = config.config_from_flagfile(os.path.join(ROOT, "experiments", "configs", f"{name}.flags"))
  families.validate(cfg)
  assert cfg.model in ("vae", "conv_vae") and cfg.binarize == "dynamic"


def test_score_is_minus_the_elbo_at_the_posterior_mean(trained):
  """On binary images the score is -ELBO at the posterior mean; grey pixels are offset by their
  own entropy, so a perfect reconstruction scores its KL alone (never below 0)."""
  exp, state = trained
  family = exp.family
  binary = (exp.dataset.x_test[:64] > 127).astype(np.uint8) * 255
  x = family.normalize(jnp.asarray(binary))
  mean, log_var = family.encode(state.params, x)
  log_px = family.log_likelihood(state.params, family.decode(state.params, mean), x)
  expected = -log_px + likelihoods.kl_to_standard_normal(mean, log_var)
  np.testing.assert_allclose(family.score(state, jnp.asarray(binary)), expected, rtol=1e-4)
  grey = jax.jit(family.score)(state, jnp.asarray(exp.dataset.x_test))
  assert grey.shape == (297,) and (np.asarray(grey) > -1e-3).all()
