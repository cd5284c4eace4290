"""dlu's side of `scripts/benchmark.py`: the real train step on device-resident batches.

Each model is built by `dlu.train.experiment.build` from flags, exactly as `experiments.train`
builds it, and trained through the loop's feed (`dlu.train.loop.make_feed`) with `--steps_per_dispatch`.
"""

from __future__ import annotations

import math
import tempfile
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags as absl_flags

absl_flags.FLAGS.mark_as_parsed()  # dlu's flags are read as defaults; nothing is parsed here.

from dlu import config, data, families  # noqa: E402
from dlu.data import text as text_data  # noqa: E402
from dlu.models import layers  # noqa: E402
from dlu.models import text as text_models  # noqa: E402
from dlu.runtime import parallel  # noqa: E402
from dlu.train import experiment, loop  # noqa: E402


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
    self,
    dataset: str,
    batch_size: int,
    steps_per_dispatch: int,
    model_flags: dict[str, dict],
    extra_flags: dict[str, str] | None = None,
  ):
    """`extra_flags`: flag values as text (NAME: VALUE), set for every model."""
    self.dataset, self.batch_size, self.default_k = dataset, batch_size, steps_per_dispatch
    self.extra = {}
    for name, text in (extra_flags or {}).items():
      if name not in absl_flags.FLAGS:
        raise KeyError(f"--config: dlu has no flag --{name}")
      self.extra[name] = absl_flags.FLAGS[name].parser.parse(text)
    self.model_flags, self.runs = model_flags, {}
    self.workdir = tempfile.mkdtemp(prefix="dlu_benchmark_")

  def _config(self, model: str, **run_flags):
    if model not in families.names():
      raise KeyError(f"no model {model!r} in this dlu (it has {', '.join(families.names())})")
    known = set(vars(config.make_config()))
    overrides = {
      k: v for k, v in {**self.model_flags[model], **self.extra, **run_flags}.items() if k in known
    }
    overrides.setdefault("steps_per_dispatch", self.default_k)
    dataset = overrides.pop("dataset", self.dataset)  # the sequence models name their own
    return config.make_config(model=model, dataset=dataset, batch_size=self.batch_size, **overrides)

  def split(self, model: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training split, test split) of a model's dataset as a run with `--seed=seed` and no
    validation split reads them (series and text: scaled or tokenised by dlu), for the peers."""
    cfg = self._config(model, seed=seed, validation_fraction=0.0)
    ds = data.load(cfg.dataset, table_options=experiment.table_options(cfg, ""))
    return ds.x_train, ds.x_test

  def _build(self, cfg):
    """(experiment, initial state, feed) of a config, as `experiments.train` builds them."""
    exp = experiment.build(cfg, self.workdir)
    state = parallel.make_init(exp.family, exp.mesh)[0](exp.init_rng)
    feed = loop.make_feed(exp)
    return exp, state, feed

  def setup(self, model: str, latent_dim: int, x_train=None) -> tuple[float, float]:
    """(seconds to the end of the first step, compilation included, as the loop prints it;
    seconds per step after it). `x_train`: the peers' data (dlu reads its own)."""
    del latent_dim, x_train  # in the model's flags
    cfg = self._config(model)
    exp, state, feed = self._build(cfg)
    k = cfg.steps_per_dispatch
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
    dtype = jnp.int32 if exp.spec.is_text else jnp.float32 if exp.spec.is_series else jnp.uint8
    batch = {"image": jax.ShapeDtypeStruct((self.batch_size,) + exp.spec.example_shape, dtype)}
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

  def train(self, model, latent_dim, seed, steps, eval_at, inputs, n_samples, report):
    """Train a fresh model (`--seed=seed`, the whole training split) for `steps` steps; at each
    step in `eval_at` (multiples of the model's steps per dispatch), `report(step, training
    seconds so far, outputs)` (the time it takes is not counted)."""
    del latent_dim  # in the model's flags
    cfg = self._config(model, seed=seed, num_steps=steps, validation_fraction=0.0)
    exp, state, feed = self._build(cfg)
    if "x_test" in inputs and not np.array_equal(
      exp.dataset.x_test, inputs["x_test"], equal_nan=True
    ):
      raise ValueError(f"{model}: dlu's test split (seed {seed}) is not the one the peers score")
    outputs, k, seconds, step = _outputs_fn(exp, model), cfg.steps_per_dispatch, 0.0, 0
    for target in eval_at:
      t = time.perf_counter()
      while step < target:
        n = min(k, target - step)
        state, metrics = feed(state, step, n)
        step += n
      jax.block_until_ready((state, metrics))
      seconds += time.perf_counter() - t
      report(step, seconds, outputs(state, inputs, n_samples))
    feed.close()


def _outputs_fn(exp, model: str):
  """`(state, inputs, n_samples) -> dict of arrays` that the benchmark scores (see
  `benchmark.py`), in batches of 1,000."""
  family, batch = exp.family, 1000
  if model in ("ae_conv1d", "text_ae"):
    if model == "ae_conv1d":  # reconstructions of the test series (NaN steps read as missing)
      fn = jax.jit(lambda state, x: family.reconstruct(state, x))
    else:  # the decoder's next-token logits, teacher-forced, from each document's code
      fn = jax.jit(
        lambda state, x: family.model.apply(
          {"params": state.params}, x, text_models.decoder_inputs(x, text_data.BOS)
        )
      )

    def outputs(state, inputs, n):
      x = inputs["x_test"]
      key = "output" if model == "ae_conv1d" else "logits"
      return {
        key: np.concatenate(
          [np.asarray(fn(state, x[i : i + batch])) for i in range(0, len(x), batch)]
        )
      }

    return outputs
  if model == "dcgan":
    sample = jax.jit(lambda s, k: family.samples_from_noise(s, family.sample_noise(k, 0, batch)))

    def outputs(state, inputs, n):
      key = jax.random.key(exp.cfg.seed)
      parts = [sample(state, jax.random.fold_in(key, i)) for i in range(-(-n // batch))]
      return {"samples": np.concatenate([np.asarray(p) for p in parts])[:n]}

    return outputs
  if model == "conv_vae":

    @jax.jit
    def vae(params, x, eps):
      mean, log_var = family.encode(params, x)
      return mean, log_var, family.decode(params, mean + jnp.exp(0.5 * log_var) * eps)

    def outputs(state, inputs, n):
      x, eps = inputs["binary"], inputs["eps"]
      parts = [
        vae(state.params, x[i : i + batch], eps[i : i + batch]) for i in range(0, len(x), batch)
      ]
      return {
        k: np.concatenate([np.asarray(p[j]) for p in parts])
        for j, k in enumerate(("mean", "log_var", "logits"))
      }

    return outputs
  # Autoencoders: the decoder's output (reconstructions for MSE, logits for BCE).
  recon = jax.jit(lambda params, x: family.model.apply({"params": params}, family.normalize(x)))

  def outputs(state, inputs, n):
    x = inputs["images"]
    return {
      "output": np.concatenate(
        [np.asarray(recon(state.params, x[i : i + batch])) for i in range(0, len(x), batch)]
      )
    }

  return outputs
