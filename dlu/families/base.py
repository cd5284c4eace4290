"""What the training loop needs from a model family, and the single-network case.

A family owns its modules, losses and metrics. The loop only calls these pure
functions (under jit or pmap) and never looks inside the state:

  init_state(rng)                       -> TrainState
  train_step(state, batch, rng, *, axis_name=None) -> (state, metrics)
  eval_metrics(state, batch, rng)       -> {name: [B] per-example values}
  images(state, batch, rng)             -> {name: [rows, cols, H, W, C] in [0, 1]}
  embed(state, images)                  -> [B, D]
  reconstruct(state, images)            -> [B, ...] in the model's units (autoencoders, VAEs)
  score(state, images)                  -> [B] anomaly score, higher = less like the data
  sample_noise(rng, start, n), samples_from_noise(state, noise) -> [n, H, W, C] in [0, 1]

and, host-side, with an `EvalContext` (mesh, batch size, rng, workdir):

  prepare(dataset, ctx)                 once before init (e.g. load a pretrained encoder)
  before_step(state, step)              before each train step (e.g. DEC's target refresh)
  split_metrics(state, dataset, ctx)    metrics that are not per-example means (FID)
  final_metrics(state, dataset, ctx)    expensive end-of-run metrics (IWAE NLL)

The evaluators (`dlu.evaluators`: `metrics`, `likelihood`, `images`, `clustering`) decide
when these run and where their results go.

`batch` is a dict with `image`: [B, H, W, C] images (uint8 or float, as stored) or [B, D]
vectors (float32 model inputs),
`index`: [B] int32 rows of the training split when the family sets `needs_index`, and
`label`: [B] int32 classes of those rows when it sets `needs_label` (train and eval batches).
`rng` is the run's train key, the same at every call: a step folds in `state.step` to
draw its own noise. `axis_name` is set only under pmap; under jit the loss is a mean over the
global batch and XLA inserts the reductions itself.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlu import data
from dlu.config import Config, model_flags
from dlu.errors import UsageError
from dlu.runtime import batched_eval, optim, parallel

#: A latent unit is active when its posterior mean varies across inputs by more than this
#: (Burda et al. 2016).
ACTIVE_UNIT_THRESHOLD = 0.01

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model needs to know of the data."""

  example_shape: tuple[int, ...]  # an image's (H, W, C), a series' (T, C) or a vector's (D,)
  num_classes: int | None
  num_train: int
  pixel_range: str = "unit"
  # Tables: (kind, start, stop) of each feature column's encoded columns (dlu.ops.tabular;
  # empty: numbers only), and whether missing cells stay NaN for the model to mask
  # (--impute=model).
  columns: tuple[tuple[str, int, int], ...] = ()
  masked: bool = False
  # Tables: (start, stop, dim) of each category the model embeds (--embed_levels): its one-hot
  # columns read as a level id looked up in a learned embedding of `dim` numbers.
  embedded: tuple[tuple[int, int, int], ...] = ()
  vocab_size: int | None = None  # text: token ids [L] in 0..vocab_size-1 (dlu.data.text)

  @property
  def is_text(self) -> bool:
    return self.vocab_size is not None

  @property
  def is_image(self) -> bool:
    return len(self.example_shape) == 3

  @property
  def is_series(self) -> bool:
    return len(self.example_shape) == 2

  def require_images(self, model: str, instead: str | None = None) -> None:
    """UsageError unless the data are images: convolutional models cannot take vectors."""
    if not self.is_image:
      hint = f" (use --model={instead})" if instead else ""
      raise UsageError(
        f"--model={model} needs images [H, W, C]; the data are vectors of "
        f"{self.example_shape[0]} features{hint}"
      )


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What host-side evaluation hooks may use."""

  mesh: Any
  batch_size: int  # global eval batch size, a multiple of the device count
  rng: jax.Array
  workdir: str
  cfg: Config


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32: completed steps
  params: Any
  opt_state: Any
  extra: Any = flax.struct.field(default_factory=dict)  # e.g. batch_stats, EMA params


class Family:
  """Base class; subclasses implement the methods the loop calls."""

  #: names of `--model` values this family serves.
  models: tuple[str, ...] = ()
  #: train metrics shown on the console progress line.
  progress_keys: tuple[str, ...] = ("loss",)
  #: whether training batches carry `index`, the examples' rows in the training split.
  needs_index: bool = False
  #: whether train and eval batches carry `label`, the examples' classes (labelled data only).
  needs_label: bool = False
  #: whether the family reads time series [T, C] with NaN (missing) steps.
  takes_series: bool = False
  #: whether the family takes table rows with missing (NaN) cells (--impute=model).
  takes_missing: bool = False
  #: whether the family reads text: token ids [L] with 0 padding (`DataSpec.vocab_size`).
  takes_text: bool = False
  #: whether the family's model embeds many-level categories (`DataSpec.embedded`,
  #: --embed_levels); the others' tables are fitted with every category one-hot.
  takes_embedded: bool = False

  def __init__(self, cfg: Config, spec: DataSpec):
    self.cfg = cfg
    self.spec = spec
    if spec.embedded and not self.takes_embedded:
      takers = ", ".join(n for n in names() if get(n).takes_embedded)
      raise UsageError(
        f"--model={cfg.model} reads categories one-hot only, and this table's preprocessing "
        f"embeds {len(spec.embedded)} (--embed_levels); use --model= one of {takers}, or train "
        "again with --embed_levels=0"
      )
    #: the initializer of every kernel of the models the family builds (a key of
    #: `layers.KERNEL_INITS`): --kernel_init resolved for --model, once.
    self.kernel_init = model_flags.kernel_init_name(cfg)
    #: the compute dtype of every model the family builds (--compute_dtype): activations,
    #: matmuls and convolutions; parameters, optimizer state, losses and metrics stay float32.
    self.compute_dtype = model_flags.compute_dtype(cfg)

  @classmethod
  def validate(cls, cfg: Config) -> None:
    """Raise UsageError for family flags that cannot work."""

  def init_state(self, rng: jax.Array) -> TrainState:
    raise NotImplementedError

  def train_step(
    self, state: TrainState, batch: Batch, rng: jax.Array, *, axis_name: str | None = None
  ) -> tuple[TrainState, Metrics]:
    raise NotImplementedError

  def eval_metrics(self, state: TrainState, batch: Batch, rng: jax.Array) -> Metrics:
    raise NotImplementedError

  def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    return {}

  def prepare(self, dataset: data.Dataset, ctx: EvalContext) -> None:
    """Host-side set-up before the state is initialised."""

  def step_boundaries(self) -> tuple[int, ...]:
    """Intervals that multi-step dispatches must not cross (e.g. a `before_step` period)."""
    return ()

  def before_step(self, state: TrainState, step: int) -> TrainState:
    """Host-side work before train step `step`, on the state as the loop holds it."""
    return state

  def split_metrics(
    self, state: TrainState, dataset: data.Dataset, ctx: EvalContext
  ) -> dict[str, float]:
    return {}

  def final_metrics(
    self, state: TrainState, dataset: data.Dataset, ctx: EvalContext
  ) -> dict[str, float]:
    return {}

  def embed(self, state: TrainState, images: jax.Array) -> jax.Array:
    raise NotImplementedError(f"{type(self).__name__} has no embedding")

  def reconstruct(self, state: TrainState, images: jax.Array) -> jax.Array:
    """Reconstructions of stored inputs, in the model's units (autoencoders, VAEs). [B, ...]"""
    raise NotImplementedError(f"{type(self).__name__} does not reconstruct")

  def score(self, state: TrainState, images: jax.Array) -> jax.Array:
    """An anomaly score per example: higher is less like the training data. [B]"""
    raise NotImplementedError(f"{type(self).__name__} has no anomaly score")

  @property
  def has_reconstruction(self) -> bool:
    return type(self).reconstruct is not Family.reconstruct

  @property
  def has_score(self) -> bool:
    return type(self).score is not Family.score

  @property
  def has_embedding(self) -> bool:
    """Whether `embed` is defined (evaluators that need embeddings check it)."""
    return type(self).embed is not Family.embed

  def sample_noise(self, rng: jax.Array, start: jax.Array | int, n: int) -> Any:
    """Inputs of n samples (noise, and labels for conditional models from class `start`)."""
    raise NotImplementedError(f"{type(self).__name__} draws no samples")

  def samples_from_noise(self, state: TrainState, noise: Any) -> jax.Array:
    """Samples in [0, 1] from `sample_noise`'s output. [n, H, W, C]"""
    raise NotImplementedError(f"{type(self).__name__} draws no samples")

  @property
  def has_samples(self) -> bool:
    """Whether the family draws samples (the sample_quality evaluator needs them)."""
    return type(self).samples_from_noise is not Family.samples_from_noise

  def _per_example(self, name: str, mesh):
    """The jitted (state, inputs, rng) -> [B, ...] method `name`, built once per mesh."""
    cache = self.__dict__.setdefault("_jitted", {})
    if (name, mesh) not in cache:
      cache[name, mesh] = parallel.make_per_example(getattr(self, name), mesh)
    return cache[name, mesh]

  def active_units(self, state, x, ctx: EvalContext) -> int:
    """How many latent units of `posterior_mean(state, inputs, rng)` are active on `x`."""
    means = batched_eval.per_example(
      self._per_example("posterior_mean", ctx.mesh),
      state,
      x,
      mesh=ctx.mesh,
      batch_size=ctx.batch_size,
      rng=ctx.rng,
    )
    return int(np.sum(np.var(means, axis=0) > ACTIVE_UNIT_THRESHOLD))

  def normalize(self, images: jax.Array) -> jax.Array:
    """Stored pixels to the model's range; vectors are model inputs already."""
    return data.normalize(images, self.spec.pixel_range) if self.spec.is_image else images


def norms(*, grads: Any, params: Any, updates: Any) -> Metrics:
  return {
    "grad_norm": optax.tree.norm(grads),
    "param_norm": optax.tree.norm(params),
    "update_norm": optax.tree.norm(updates),
  }


def per_device_rng(rng: jax.Array, axis_name: str | None) -> jax.Array:
  """Under pmap each device draws its own noise; under jit the draw is already global."""
  return rng if axis_name is None else jax.random.fold_in(rng, jax.lax.axis_index(axis_name))


class SingleNetworkFamily(Family):
  """A family with one parameter tree, one optimizer and a scalar loss."""

  #: whether `loss` couples the examples of the batch and takes the pmap axis (`axis_name=`)
  #: to see the examples of the other devices.
  loss_needs_axis: bool = False

  def make_model(self) -> flax.linen.Module:
    raise NotImplementedError

  def loss(self, params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
    """Scalar loss (a mean over the batch) and metrics to log."""
    raise NotImplementedError

  def make_optimizer(self) -> optax.GradientTransformation:
    return optim.make_optimizer(self.cfg)

  @property
  def model(self) -> flax.linen.Module:
    if not hasattr(self, "_model"):
      self._model = self.make_model()
    return self._model

  @property
  def tx(self) -> optax.GradientTransformation:
    if not hasattr(self, "_tx"):
      self._tx = self.make_optimizer()
    return self._tx

  def init_params(self, rng: jax.Array) -> Any:
    dummy = jnp.zeros((1,) + self.spec.example_shape, jnp.float32)
    return self.model.init(rng, dummy)["params"]

  def init_state(self, rng: jax.Array) -> TrainState:
    params = self.init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

  def train_step(self, state, batch, rng, *, axis_name=None):
    # The step's own key: fresh noise every step, and the same noise again on resume.
    rng = per_device_rng(jax.random.fold_in(rng, state.step), axis_name)
    loss_fn = (
      functools.partial(self.loss, axis_name=axis_name) if self.loss_needs_axis else self.loss
    )
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, batch, rng)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      loss, metrics = jax.lax.pmean((loss, metrics), axis_name)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **metrics, **norms(grads=grads, params=params, updates=updates)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


_REGISTRY: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
  for name in cls.models:
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = cls
  return cls


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(model: str) -> type[Family]:
  if model not in _REGISTRY:
    raise UsageError(f"--model={model!r} is not a model; accepted: {', '.join(names())}")
  return _REGISTRY[model]
