"""dlu's side of `scripts/benchmark.py`: the real train step on device-resident batches.

Each model is built by `dlu.experiment.build` from flags, exactly as `experiments.train`
builds it, and trained through `dlu.device_data`'s feed with `--steps_per_dispatch`.
"""

from __future__ import annotations

import math
import tempfile
import time

import flax
import jax
import jax.numpy as jnp
from absl import flags as absl_flags

absl_flags.FLAGS.mark_as_parsed()  # dlu's flags are read as defaults; nothing is parsed here.

from dlu import device_data, experiment, families, parallel  # noqa: E402
from dlu import flags as dlu_flags  # noqa: E402
from dlu.models import layers  # noqa: E402


def version() -> str:
  return (
    f"jax {jax.__version__}, flax {flax.__version__}, {jax.default_backend()} backend, "
    f"{jax.device_count()} device(s)"
  )


def count_flops(jaxpr) -> float:
  """Multiply-adds x 2 of the matmuls and convolutions in a jaxpr, sub-programs included.

  Convolutions over a dilated input (transposed convs and their gradients) count only the
  products with actual input values, not with the inserted zeros.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * out * math.prod(lhs[d] for d in contract)
    elif name == "conv_general_dilated":
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
      rhs = eqn.invars[1].aval.shape
      window = math.prod(rhs[d] for d in spec[2:]) * rhs[spec[1]]
      total += 2 * out * window / math.prod(eqn.params["lhs_dilation"])
    times = eqn.params.get("length", 1) if name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += times * count_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += times * count_flops(sub)
  return total


class Runner:
  """The worker protocol of scripts/benchmark.py for dlu."""

  def __init__(
    self, dataset: str, batch_size: int, steps_per_dispatch: int, model_flags: dict[str, dict]
  ):
    self.dataset, self.batch_size, self.default_k = dataset, batch_size, steps_per_dispatch
    self.model_flags, self.runs = model_flags, {}
    self.workdir = tempfile.mkdtemp(prefix="dlu_benchmark_")

  def _config(self, model: str):
    if model not in families.names():
      raise KeyError(f"no model {model!r} in this dlu (it has {', '.join(families.names())})")
    known = set(vars(dlu_flags.make_config()))
    overrides = {k: v for k, v in self.model_flags[model].items() if k in known}
    overrides.setdefault("steps_per_dispatch", self.default_k)
    return dlu_flags.make_config(
      model=model, dataset=self.dataset, batch_size=self.batch_size, **overrides
    )

  def setup(self, model: str, latent_dim: int) -> tuple[float, float]:
    """(seconds to the end of the first step, compilation included, as the loop prints it;
    seconds per step after it)."""
    del latent_dim  # in the model's flags
    cfg = self._config(model)
    exp = experiment.build(cfg, self.workdir)
    state = parallel.make_init(exp.family, exp.mesh)[0](exp.init_rng)
    train_step = parallel.make_train_step(exp.family, exp.mesh)
    k = cfg.steps_per_dispatch
    feed = device_data.make_feed(
      exp.family,
      exp.mesh,
      exp.dataset.x_train,
      exp.sampler,
      train_step,
      exp.train_rng,
      y_train=exp.dataset.y_train,
      steps_per_dispatch=k,
    )
    t = time.perf_counter()
    state, metrics = feed(state, 0, k)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t
    t = time.perf_counter()
    state, metrics = feed(state, k, k)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t) / k
    self.runs[model] = {"exp": exp, "feed": feed, "state": state, "step": 2 * k, "k": k}
    # The first dispatch ran K steps; the first step alone ended K-1 steps earlier.
    return first - step_s * (k - 1), step_s

  def run(self, model: str, num_steps: int) -> float:
    run = self.runs[model]
    feed, state, step, k = run["feed"], run["state"], run["step"], run["k"]
    dispatches = max(1, num_steps // k)
    t = time.perf_counter()
    for _ in range(dispatches):
      state, metrics = feed(state, step, k)
      step += k
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - t
    run["state"], run["step"] = state, step
    return seconds * num_steps / (dispatches * k)  # seconds for `num_steps` steps

  def flops_per_example(self, model: str) -> float:
    """FLOPs of one training step of the model as written (native convs), per example."""
    exp = (
      self.runs[model]["exp"]
      if model in self.runs
      else experiment.build(self._config(model), self.workdir)
    )
    state = jax.eval_shape(exp.family.init_state, exp.init_rng)
    batch = {"image": jax.ShapeDtypeStruct((self.batch_size,) + exp.spec.example_shape, jnp.uint8)}
    if exp.family.needs_label:
      batch["label"] = jax.ShapeDtypeStruct((self.batch_size,), jnp.int32)
    fast, layers.FAST_CPU_CONV = layers.FAST_CPU_CONV, False
    try:
      jaxpr = jax.make_jaxpr(exp.family.train_step)(state, batch, exp.train_rng)
    finally:
      layers.FAST_CPU_CONV = fast
    return count_flops(jaxpr.jaxpr) / self.batch_size

  def matmul_peak(self) -> float:
    """GFLOP/s of a float32 2048x2048 matmul, best of 5."""
    n = 2048
    a, b = (jax.random.normal(jax.random.key(i), (n, n)) for i in range(2))
    mm = jax.jit(jnp.matmul)
    jax.block_until_ready(mm(a, b))
    best = math.inf
    for _ in range(5):
      t = time.perf_counter()
      jax.block_until_ready(mm(a, b))
      best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9

  def steps_per_dispatch(self, model: str) -> int:
    return self.runs[model]["k"]
