"""The `sample_quality` evaluator: FID, KID, precision and recall of --eval_samples samples of
a generative family against the test split, all in the features of dlu's classifier
(`dlu.metrics.feature_net`, trained once per dataset on its labels and cached in --data_dir), and
`fid_floor`, the FID of as many real training images: what real data scores.

Samples come from fixed noise (the run's eval key) and, for conditional models,
class-balanced labels, so every eval of a run scores the same draw.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from dlu import data
from dlu.errors import UsageError
from dlu.evaluators.registry import Inputs, register
from dlu.metrics import feature_net, sample_quality
from dlu.runtime import batched_eval, parallel

flags.DEFINE_integer(
  "eval_samples",
  10000,
  "Generated samples scored by fid, kid, precision and "
  "recall at each eval (against the test split); 0 turns them off.",
)


def check_flags(exp: Any) -> None:
  n = exp.cfg.eval_samples
  if n != 0 and not (isinstance(n, int) and n >= 10):
    raise UsageError(f"--eval_samples must be 0 (off) or at least 10, got {n!r}")


def _real_features(exp: Any, net: feature_net.FeatureNet, params: Any, n: int) -> dict[str, Any]:
  """Features of the test split, and the FID of n real training images against them."""
  ds, mesh = exp.dataset, exp.mesh
  repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  embed = jax.jit(
    lambda p, x: net.features(p, data.normalize(x)),
    in_shardings=(repl, sharded),
    out_shardings=sharded,
  )
  real = lambda x: batched_eval.embed_split(
    embed, params, x, mesh=mesh, batch_size=exp.ctx.batch_size
  )
  test = real(ds.x_test)
  rows = np.sort(
    np.random.default_rng(0).choice(len(ds.x_train), min(n, len(ds.x_train)), replace=False)
  )
  return {"test": test, "fid_floor": sample_quality.fid(real(ds.x_train[rows]), test)}


def _sample_features(
  exp: Any, state: Any, inputs: Inputs, net: feature_net.FeatureNet, params: Any, n: int
) -> np.ndarray:
  """Feature-net features of n samples from fixed noise. [n, D]"""
  family, bs = exp.family, exp.ctx.batch_size
  repl, sharded = parallel.replicated(exp.mesh), parallel.data_sharded(exp.mesh)
  noise = inputs.compiled(
    "sample_noise",
    lambda: jax.jit(lambda k, start: family.sample_noise(k, start, bs), out_shardings=sharded),
  )
  features = inputs.compiled(
    "sample_features",
    lambda: jax.jit(
      lambda s, p, z: net.features(p, family.samples_from_noise(s, z)),
      in_shardings=(repl, repl, sharded),
      out_shardings=sharded,
    ),
  )
  key = jax.random.fold_in(exp.ctx.rng, 1)
  out = []
  for i in range(-(-n // bs)):
    f = features(state, params, noise(jax.random.fold_in(key, i), i * bs))
    out.append(np.asarray(multihost_utils.process_allgather(f, tiled=True)))
  return np.concatenate(out)[:n]


@register("sample_quality", needs=("images", "samples", "labels"), check=check_flags)
def sample_quality_metrics(exp: Any, state: Any, inputs: Inputs) -> dict[str, Any]:
  """fid, kid, precision, recall of --eval_samples samples vs the split scored, fid_floor and
  feature_net_acc (the classifier's test accuracy)."""
  n = exp.cfg.eval_samples
  if n == 0:
    return {}
  net = inputs.compiled(
    "feature_net",
    lambda: feature_net.load_or_train(
      exp.dataset if exp.dataset.unsplit is None else exp.dataset.unsplit,
      exp.cfg.data_dir or data.default_data_dir(),
    ),
  )
  params = inputs.compiled("feature_params", lambda: parallel.put_replicated(exp.mesh, net.params))
  real = inputs.compiled(
    f"real_features/{inputs.split}", lambda: _real_features(exp, net, params, n)
  )
  fake = _sample_features(exp, state, inputs, net, params, n)
  return {
    **sample_quality.all_metrics(real["test"], fake),
    "fid_floor": real["fid_floor"],
    "feature_net_acc": net.test_accuracy,
  }
