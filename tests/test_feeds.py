"""Device-resident batches and K steps per dispatch give the host loop's results."""

import json
import os

import jax
import numpy as np
import pytest

from dlu import config, families
from dlu.data import feeds
from dlu.errors import UsageError
from dlu.runtime import parallel
from dlu.train import experiment, loop


def _cfg(**overrides):
  return config.make_config(
    **{
      "model": "ae_mlp",
      "widths": ["16"],
      "latent_dim": 4,
      "dataset": "digits",
      "batch_size": 64,
      "noise": "gaussian",
      "noise_level": 0.1,
      "num_steps": 8,
      "log_every": 4,
      "eval_every": 8,
      "checkpoint_every": 8,
      "num_images": 8,
      **overrides,
    }
  )


@pytest.mark.slow
def test_four_steps_per_dispatch_match_one(tmp_path):
  exp = experiment.build(_cfg(), str(tmp_path))
  init = parallel.make_init(exp.family, exp.mesh)[0]
  train_step = parallel.make_train_step(
    exp.family, exp.mesh
  )  # one compilation, shared by all feeds
  feed = feeds.make_feed(
    exp.family,
    exp.mesh,
    exp.dataset.x_train,
    exp.sampler,
    train_step,
    exp.train_rng,
    steps_per_dispatch=4,
  )
  host = feeds.make_feed(
    exp.family,
    exp.mesh,
    exp.dataset.x_train,
    exp.sampler,
    train_step,
    exp.train_rng,
    input_pipeline="host",
  )

  def train(feed, lengths):
    state, step = init(exp.init_rng), 0
    for n in lengths:
      state, metrics = feed(state, step, n)
      step += n
    return jax.device_get(state), jax.device_get(metrics)

  one, m1 = train(feed, [1] * 8)
  four, m4 = train(feed, [4, 4])
  assert int(one.step) == int(four.step) == 8
  # K=1 on device runs the host loop's program on the same batches: identical results.
  jax.tree.map(np.testing.assert_array_equal, train(host, [1] * 8)[0].params, one.params)
  # K=4 runs the same steps inside a scan: equal up to float32 rounding of the fused program.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one.params, four.params
  )
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)


def test_dispatches_stop_at_log_eval_and_checkpoint_steps():
  lengths, step = [], 3  # resumed at step 3
  while step < 20:
    n = feeds.dispatch_length(step, 20, 4, (5, 10, 10))
    lengths.append(n)
    step += n
  assert lengths == [2, 4, 1, 4, 1, 4, 1]  # ends on 5, 10, 15, 20 like K=1 would log


@pytest.mark.slow
def test_run_with_steps_per_dispatch_logs_where_k1_does(tmp_path):
  cfg = _cfg(num_steps=10, log_every=5, eval_every=10, checkpoint_every=10, steps_per_dispatch=4)
  metrics = loop.train_and_evaluate(cfg, str(tmp_path))
  assert np.isfinite(metrics["mse"])
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if r["split"] == "train"] == [5, 10]


def test_bad_steps_per_dispatch_is_a_usage_error(tmp_path):
  with pytest.raises(UsageError, match="--steps_per_dispatch must be a positive integer"):
    families.validate(_cfg(steps_per_dispatch=0))
  exp = experiment.build(_cfg(), str(tmp_path))
  with pytest.raises(UsageError, match="--steps_per_dispatch=4 needs .* --parallelism=pmap"):
    feeds.make_feed(
      exp.family,
      exp.mesh,
      exp.dataset.x_train,
      exp.sampler,
      None,
      exp.train_rng,
      parallelism="pmap",
      steps_per_dispatch=4,
    )


@pytest.mark.parametrize(
  "overrides",
  [
    {},
    pytest.param({"model": "vae", "widths": ["16"], "latent_dim": 2}, marks=pytest.mark.slow),
    pytest.param(
      {"model": "mlp_gan", "gan_widths": ["16", "16"], "latent_dim": 4, "pixel_range": "symmetric"},
      marks=pytest.mark.slow,
    ),
    pytest.param(
      {"model": "simclr_mlp", "widths": ["16"], "latent_dim": 4, "noise": "none"},
      marks=pytest.mark.slow,
    ),
  ],
)
def test_a_dispatch_makes_no_implicit_transfer_and_donates_the_state(tmp_path, overrides):
  """Once compiled, a dispatch (one step, and K steps in one scan) moves nothing between host
  and devices but the batch indices it puts there itself, and the old state's buffers are
  given to the new one."""
  exp = experiment.build(_cfg(steps_per_dispatch=4, **overrides), str(tmp_path))
  state = parallel.make_init(exp.family, exp.mesh)[0](exp.init_rng)
  feed = loop.make_feed(exp)
  state, _ = feed(state, 0, 1)  # compiles both programs
  state, _ = feed(state, 1, 4)
  for step, n in ((5, 1), (6, 4)):
    old = state
    with jax.transfer_guard("disallow"):
      state, metrics = feed(state, step, n)
      jax.block_until_ready((state, metrics))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old.params)), "state not donated"
  assert np.all(np.isfinite(jax.device_get(metrics["loss"] if "loss" in metrics else 0.0)))
