"""--compute_dtype: bfloat16 activations with float32 parameters, optimizer state, losses and
metrics in every family; the float32 path unchanged; the flag checked and recorded."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dlu
from dlu import config, families
from dlu.errors import UsageError
from dlu.families import DataSpec
from dlu.ops import gan_losses
from dlu.runtime import cli
from dlu.train import workspace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = DataSpec((8, 8, 1), 10, 16)
SYMMETRIC = DataSpec((8, 8, 1), 10, 16, "symmetric")
# Tiny models of each family (the DEC case starts from the ae_mlp one).
CASES = {
  "ae_mlp": dict(widths=["16"], latent_dim=4),
  "ae_conv": dict(conv_channels=["4", "8"], latent_dim=4),
  "vae": dict(widths=["16"], latent_dim=4),
  "conv_vae": dict(conv_channels=["4", "8"], latent_dim=4),
  "simclr_mlp": dict(
    widths=["16"], latent_dim=8, projection_dims=["8", "4"], cluster_head=True, n_clusters=3
  ),
  "simclr_conv": dict(conv_channels=["4", "8"], latent_dim=8, projection_dims=["8", "4"]),
}
# The first step's loss of these models at seed 0 before --compute_dtype existed (float32).
FLOAT32_FIRST_LOSS = {
  "ae_mlp": "0x1.892ec80000000p-2",
  "vae": "0x1.746bc40000000p+5",
}
X = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)).astype(np.uint8)
LABELS = jnp.arange(16, dtype=jnp.int32) % 10
BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)
COMPUTE_LAYERS = (nn.Dense, nn.Conv, nn.ConvTranspose, nn.BatchNorm, nn.Embed)


def _family(model, spec=SPEC, **overrides):
  cfg = config.make_config(
    model=model, batch_size=16, learning_rate=1e-3, **CASES.get(model, {}), **overrides
  )
  return families.get(model)(cfg, spec)


def _floating_dtypes(tree):
  return {
    jnp.dtype(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  }


def _layer_dtypes(model, variables, *args, **kwargs):
  """The dtypes of the outputs of every Dense, Conv, ConvTranspose, BatchNorm and Embed layer
  of `model` (from shapes alone: nothing is compiled)."""

  def apply(variables, *args):
    return model.apply(
      variables,
      *args,
      capture_intermediates=lambda m, _: isinstance(m, COMPUTE_LAYERS),
      mutable=["intermediates", "batch_stats"],
      **kwargs,
    )[1]["intermediates"]

  outputs = jax.tree_util.tree_flatten_with_path(jax.eval_shape(apply, variables, *args))[0]
  return {
    jax.tree_util.keystr(path[:-2], simple=True, separator="/"): o.dtype for path, o in outputs
  }


def _train(family, steps=2):
  """`steps` of the family's own train step on the tiny batch."""
  state = jax.jit(family.init_state)(jax.random.key(0))
  step = jax.jit(family.train_step)
  for _ in range(steps):
    state, metrics = step(state, {"image": jnp.asarray(X), "label": LABELS}, jax.random.key(1))
  return state, metrics


def _descend(loss_fn, params, tx, steps=6):
  """(loss before, loss after `steps` updates of `tx`, the parameters then) of the scalar
  `loss_fn(params)`."""
  loss_fn = jax.jit(loss_fn)

  @jax.jit
  def update(params, opt_state):
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  before, state = loss_fn(params), (params, tx.init(params))
  for _ in range(steps):
    state = update(*state)
  return before, loss_fn(state[0]), state


def _is_finite_float32(*values):
  return all(jnp.dtype(v.dtype) == F32 and np.isfinite(v).all() for v in values)


@pytest.mark.parametrize("model", sorted(CASES))
def test_bfloat16_layers_with_float32_parameters_and_outputs(model):
  family = _family(model, compute_dtype="bfloat16")
  assert family.compute_dtype == BF16 and family.model.dtype == BF16
  x = family.normalize(jnp.asarray(X))
  state = jax.eval_shape(family.init_state, jax.random.key(0))
  assert _floating_dtypes(state.params) == _floating_dtypes(state.opt_state) == {F32}
  # Every layer computes in bfloat16; the model's outputs and the loss are float32.
  dtypes = _layer_dtypes(family.model, {"params": state.params}, x)
  assert dtypes and set(dtypes.values()) == {BF16}
  assert _floating_dtypes(jax.eval_shape(family.model.apply, {"params": state.params}, x)) == {F32}
  batch = {"image": jnp.asarray(X), "step": state.step}
  loss, metrics = jax.eval_shape(family.loss, state.params, batch, jax.random.key(1))
  assert _floating_dtypes((loss, metrics)) == {F32}


@pytest.mark.parametrize("model", ["ae_mlp", "ae_conv", "vae", "simclr_mlp"])
@pytest.mark.slow
def test_bfloat16_training_lowers_a_finite_float32_loss(model):
  """Autoencoders (MLP, conv), the VAE's ELBO, SimCLR's NT-Xent with a cluster head."""
  family = _family(model, compute_dtype="bfloat16")
  params = family.init_params(jax.random.key(0))
  batch = {"image": jnp.asarray(X), "step": jnp.zeros((), jnp.int32)}
  before, after, state = _descend(
    lambda p: family.loss(p, batch, jax.random.key(3))[0], params, family.tx
  )
  assert _is_finite_float32(before, after) and after < before
  assert _floating_dtypes(state) == {F32}  # the parameters and Adam's moments


@pytest.mark.parametrize(
  "model, loss",
  [
    ("dcgan", dict(gan_loss="ns", conditional=True)),
    ("mlp_gan", dict(gan_loss="wgan_gp", r1_weight=1.0)),
  ],
)
@pytest.mark.slow
def test_bfloat16_gan(model, loss):
  """A class-conditional DCGAN (label embedding, projection discriminator) and a WGAN-GP MLP
  pair with the R1 penalty."""
  overrides = dict(gan_channels=4, gan_widths=["16", "8"], latent_dim=4, pixel_range="symmetric")
  family = _family(model, SYMMETRIC, compute_dtype="bfloat16", **overrides, **loss)
  state = jax.jit(family.init_state)(jax.random.key(0))
  assert _floating_dtypes((state.params, state.opt_state, state.extra)) == {F32}
  z = jax.random.normal(jax.random.key(1), (16, 4))
  real = family.normalize(jnp.asarray(X))
  labels = LABELS if family.needs_label else None
  g_vars = {"params": state.params["generator"], "batch_stats": state.extra["batch_stats"]}
  d_params = state.params["discriminator"]
  gen = family.generator()
  assert set(_layer_dtypes(gen, g_vars, z, labels, train=True).values()) == {BF16}
  d_dtypes = _layer_dtypes(family.discriminator, {"params": d_params}, real, labels)
  # The projection discriminator's class embedding is float32: its term is summed in float32.
  assert {name for name, dtype in d_dtypes.items() if dtype != BF16} == (
    {"class_embed"} if family.needs_label else set()
  )
  assert len(d_dtypes) >= 3
  fake = jax.jit(lambda v, z: gen.apply(v, z, labels, train=False))(g_vars, z)
  assert fake.dtype == F32

  # Each network's own loss falls under a few Adam steps of its own (the other held fixed).
  d_loss = lambda d: family.d_objective(d, real, fake, jax.random.key(2), None, labels)[0]
  g_loss = lambda g: gan_losses.generator_loss(
    fake_logit=family.critic(d_params, labels)(
      gen.apply({**g_vars, "params": g}, z, labels, train=True, mutable=["batch_stats"])[0]
    ),
    loss_type=family.cfg.gan_loss,
  )
  for loss_fn, params, tx in (
    (d_loss, d_params, family.d_tx),
    (g_loss, g_vars["params"], family.g_tx),
  ):
    before, after, _ = _descend(loss_fn, params, tx)
    assert _is_finite_float32(before, after) and after < before
  # The whole step (D and G updates, penalties, EMA, BatchNorm statistics) stays float32.
  state, metrics = _train(family)
  assert _is_finite_float32(*metrics.values())
  assert _floating_dtypes((state.params, state.opt_state, state.extra)) == {F32}
  if model == "mlp_gan":
    assert metrics["grad_penalty"] > 0 and metrics["r1_penalty"] > 0


@pytest.mark.parametrize("model", ["dec", "idec"])
def test_bfloat16_dec_cluster_head(model):
  ae = _family("ae_mlp", compute_dtype="bfloat16")
  family = families.get(model)(
    config.make_config(
      model=model,
      init_from="unused",
      n_clusters=3,
      learning_rate=1e-3,
      compute_dtype="bfloat16",
    ),
    SPEC,
  )
  rng = np.random.default_rng(0)
  family.set_pretrained(
    ae, ae.init_params(jax.random.key(0)), rng.normal(size=(3, 4)).astype(np.float32)
  )
  state = family.init_state(None)
  target = jax.nn.softmax(jnp.asarray(rng.normal(size=(16, 3)), jnp.float32) * 3)
  state = state.replace(extra={**state.extra, "p": target})
  assert _floating_dtypes((state.params, state.opt_state)) == {F32}
  x = family.normalize(jnp.asarray(X))
  dtypes = _layer_dtypes(ae.model, {"params": state.params["ae"]}, x)
  assert dtypes and set(dtypes.values()) == {BF16}
  # The embeddings and the Student-t assignments are float32, and so the KL.
  assert jax.eval_shape(family.encode, state.params["ae"], x).dtype == F32
  assert jax.eval_shape(family.cluster_probs, state, jnp.asarray(X)).dtype == F32
  batch = {"image": jnp.asarray(X), "index": jnp.arange(16, dtype=jnp.int32), "target": target}
  loss = jax.jit(family.loss)(state.params, batch, None)[0]
  step = jax.jit(family.train_step)
  for _ in range(6):
    state, metrics = step(state, {k: batch[k] for k in ("image", "index")}, jax.random.key(1))
  assert _is_finite_float32(loss, *metrics.values())
  assert _floating_dtypes((state.params, state.opt_state)) == {F32}
  assert jax.jit(family.loss)(state.params, batch, None)[0] < loss


@pytest.mark.parametrize("model", ["ae_mlp", "vae"])
@pytest.mark.slow
def test_float32_is_the_default_and_unchanged(model):
  default, explicit = _family(model), _family(model, compute_dtype="float32")
  assert default.compute_dtype == explicit.compute_dtype == F32
  batch = {"image": jnp.asarray(X), "step": jnp.zeros((), jnp.int32)}

  def first_loss(family):
    params = family.init_params(jax.random.key(0))
    return jax.jit(family.train_step)(
      family.init_state(jax.random.key(0)), {"image": batch["image"]}, jax.random.key(1)
    )[1]["loss"], jax.make_jaxpr(family.loss)(params, batch, jax.random.key(1))

  (loss, jaxpr), (loss_explicit, _) = first_loss(default), first_loss(explicit)
  assert loss == loss_explicit  # bit for bit
  # No bfloat16 anywhere in the float32 program, and the loss of the code before the flag.
  assert "bf16" not in str(jaxpr)
  np.testing.assert_allclose(float(loss), float.fromhex(FLOAT32_FIRST_LOSS[model]), rtol=1e-6)


def test_a_bad_compute_dtype_names_the_flag():
  cfg = config.make_config(model="ae_mlp", compute_dtype="float16")
  with pytest.raises(UsageError, match="^--compute_dtype must be one of float32, bfloat16"):
    families.validate(cfg)


def test_a_bad_compute_dtype_on_the_command_line_exits_2(capsys):
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(["train", "--compute_dtype=float16"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith("error: ") and "--compute_dtype" in err, err


def test_compute_dtype_is_recorded_and_read_back(tmp_path):
  cfg = config.make_config(model="vae", compute_dtype="bfloat16")
  path = tmp_path / "flags.txt"
  path.write_text(cfg.to_flagfile())
  assert "--compute_dtype=bfloat16" in path.read_text()
  again = config.config_from_flagfile(str(path))
  assert families.get("vae")(again, SPEC).make_model().dtype == BF16


@pytest.mark.slow
def test_bfloat16_digits_run_trains_records_and_loads(tmp_path):
  workdir = str(tmp_path / "run")
  flagfile = os.path.join(ROOT, "experiments", "configs", "vae_digits.flags")
  args = [
    sys.executable,
    "-m",
    "experiments.train",
    f"--flagfile={flagfile}",
    f"--workdir={workdir}",
    "--compute_dtype=bfloat16",
    "--num_steps=6",
    "--log_every=3",
    "--eval_every=6",
    "--checkpoint_every=6",
    "--iwae_samples=4",
  ]
  proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  with open(os.path.join(workdir, "flags.txt")) as f:
    assert "--compute_dtype=bfloat16" in f.read().splitlines()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    test = [json.loads(line) for line in f if '"split": "test"' in line][-1]
  assert np.isfinite([test["elbo"], test["kl"], test["nll_iwae"]]).all() and test["kl"] > 0
  loaded = dlu.load_run(workdir)
  assert loaded.family.compute_dtype == BF16
  assert _floating_dtypes(loaded.state.params) == {F32}
  z = loaded.encode(loaded.dataset.x_test[:4])
  assert z.dtype == np.float32 and np.isfinite(z).all()
  # The compute dtype defines the run: resuming with another one is refused, naming it.
  recorded = config.config_from_flagfile(os.path.join(workdir, "flags.txt"))
  changed = workspace.differing_flags(workdir, recorded.replace(compute_dtype="float32"))
  assert [name for name, *_ in changed] == ["compute_dtype"]
