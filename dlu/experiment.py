"""A run, built from its Config: data, family, mesh, sampler and keys; its state restored or
initialised; a trained run loaded back from its workdir.

    exp = experiment.build(cfg, workdir)             # every check of bad input, nothing written
    exp, state = experiment.load_run("workdirs/vae") # a trained run, for scripts and notebooks

Training (`dlu.train_loop`), `experiments.evaluate` (`dlu.evaluate`) and
`experiments.augment` (`dlu.few_shot`) all start here. Importing this module defines every
flag a run records in its flags.txt (it imports the families and the evaluators).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from absl import flags

from dlu import (
  batched_eval,
  checkpointing,
  data,
  device_data,
  evaluators,
  families,
  parallel,
  selection,
)
from dlu import flags as dlu_flags
from dlu.data import preprocessing
from dlu.errors import UsageError
from dlu.families import DataSpec, EvalContext, Family


@dataclasses.dataclass
class Experiment:
  """Everything a run needs, built from a Config without writing anything."""

  cfg: dlu_flags.Config
  dataset: data.Dataset
  spec: DataSpec
  family: Family
  sampler: data.BatchSampler
  mesh: Any
  ctx: EvalContext
  train_rng: jax.Array
  init_rng: jax.Array


def _global_batch_size(cfg: dlu_flags.Config, num_train: int) -> int:
  if cfg.optimizer != "gd":
    return cfg.batch_size
  # Full-batch gradient descent: the whole split, less what does not split over devices.
  n = jax.device_count()
  return num_train // n * n


#: A run's table preprocessing (columns, imputation, scaling statistics of its training split).
PREPROCESSING_FILE = "preprocessing.json"


def table_options(cfg: dlu_flags.Config, workdir: str) -> data.TableOptions:
  """How a run reads tables and vectors: the preprocessing its workdir holds (resumed,
  evaluated and applied runs scale exactly as they trained), else that of the run it starts
  from (--init_from: DEC/IDEC), else fitted anew on its training split."""
  stored = None
  for directory in (workdir, getattr(cfg, "init_from", None)):
    path = os.path.join(directory or "", PREPROCESSING_FILE)
    if directory and os.path.isfile(path):
      stored = preprocessing.Preprocessing.load(path)
      break
  return data.TableOptions(
    label_column=cfg.label_column,
    test_fraction=cfg.test_fraction,
    seed=cfg.seed,
    impute=cfg.impute,
    feature_scaling=cfg.feature_scaling,
    preprocessing=stored,
  )


def save_preprocessing(exp: Experiment) -> None:
  """The table preprocessing beside the checkpoints (lead process; nothing for images)."""
  pre = exp.dataset.preprocessing
  if pre is not None and parallel.is_lead_process():
    pre.save(os.path.join(exp.ctx.workdir, PREPROCESSING_FILE))


def build(cfg: dlu_flags.Config, workdir: str) -> Experiment:
  """Everything that can fail on bad input, before the workdir is touched."""
  if not workdir:
    raise UsageError("--workdir is required: the folder for checkpoints, metrics and images")
  families.validate(cfg)
  evaluators.parse_schedule(list(cfg.evaluators), cfg.eval_every)  # --evaluators names exist
  dataset = data.load(
    cfg.dataset,
    data_dir=cfg.data_dir,
    idx_dir=cfg.idx_dir,
    table_options=table_options(cfg, workdir),
  )
  dataset = data.hold_out_validation(dataset, cfg.validation_fraction, seed=cfg.seed)
  dataset = data.class_balance(dataset, cfg.class_balance, seed=cfg.seed)
  for name in ("early_stopping_metric", "keep_best_checkpoint"):
    if getattr(cfg, name) and dataset.x_valid is None:
      raise UsageError(
        f"--{name} selects on the validation split, and {cfg.dataset} has none here: "
        "set --validation_fraction > 0 (selecting on the test split would tune on it)"
      )
  spec = DataSpec(dataset.example_shape, dataset.num_classes, len(dataset.x_train), cfg.pixel_range)
  batch_size = _global_batch_size(cfg, spec.num_train)
  parallel.check_batch_size(batch_size)
  if batch_size > spec.num_train:
    raise UsageError(
      f"--batch_size={batch_size} is larger than the training split "
      f"({spec.num_train} examples of {cfg.dataset})"
    )
  device_data.check_pipeline(
    cfg.input_pipeline,
    dataset.x_train,
    parallelism=cfg.parallelism,
    steps_per_dispatch=cfg.steps_per_dispatch,
  )
  sampler = data.BatchSampler(
    spec.num_train,
    batch_size,
    seed=cfg.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  family = families.get(cfg.model)(cfg, spec)
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(cfg.seed), 3)
  mesh = parallel.make_mesh()
  ctx = EvalContext(
    mesh=mesh,
    batch_size=batched_eval.round_batch_size(cfg.eval_batch_size),
    rng=eval_rng,
    workdir=workdir,
    cfg=cfg,
  )
  family.prepare(dataset, ctx)
  jax.eval_shape(family.init_state, init_rng)  # Model/data mismatches surface here, not mid-run.
  return Experiment(cfg, dataset, spec, family, sampler, mesh, ctx, train_rng, init_rng)


# Flags that change how a run is driven or logged, not what its state holds (and every flag
# of the evaluators).
RUN_FLAGS = frozenset(
  {
    "num_steps",
    "eval_every",
    "log_every",
    "checkpoint_every",
    "workdir",
    "keep_checkpoints",
    "eval_batch_size",
    "num_images",
    "parallelism",
    "debug_nans",
    "data_dir",
    "idx_dir",
    "steps_per_dispatch",
    "profile_steps",
    "early_stopping_metric",
    "early_stopping_patience",
    "early_stopping_min_delta",
    "keep_best_checkpoint",
    "checkpoint",
  }
)


def _state_flag(name: str) -> bool:
  if name in RUN_FLAGS:
    return False
  defined_in = getattr(flags.FLAGS.find_module_defining_flag(name), "startswith", None)
  return not (defined_in and defined_in("dlu.evaluators"))


def _differing_flags(workdir: str, cfg: dlu_flags.Config) -> list[str]:
  try:
    old = dlu_flags.config_from_flagfile(os.path.join(workdir, "flags.txt"))
  except UsageError:
    return []
  return [
    f"--{k} (checkpoint {getattr(old, k)!r}, now {v!r})"
    for k, v in sorted(vars(cfg).items())
    if _state_flag(k) and getattr(old, k, v) != v
  ]


def restore_or_init(
  exp: Experiment, ckpt: checkpointing.Checkpointer, step: int | None = None
) -> tuple[Any, bool]:
  """(state, resumed): the workdir's checkpoint at `step` (default: the latest), or a fresh
  state."""
  init, abstract_state = parallel.make_init(exp.family, exp.mesh)
  try:
    state = ckpt.restore(abstract_state, step)
  except checkpointing.CheckpointError as e:
    differing = _differing_flags(exp.ctx.workdir, exp.cfg)
    if differing:
      raise UsageError(
        f"{exp.ctx.workdir} holds a checkpoint of a different model; flags that "
        f"differ: {', '.join(differing)}. Use another --workdir"
      ) from None
    earlier = [s for s in ckpt.manager.all_steps() if s < e.step]
    hint = (
      f"; move {e.path} aside to resume from step {max(earlier)}"
      if earlier
      else "; move it aside to start over"
    )
    raise UsageError(f"{e}{hint}") from None
  return (init(exp.init_rng), False) if state is None else (state, True)


def load_run(workdir: str, **overrides: Any) -> tuple[Experiment, Any]:
  """The experiment a workdir's flags.txt records (with `overrides`), and the checkpointed
  state --checkpoint chooses (best, latest or a step; `overrides` may set it). UsageError
  when `workdir` holds no trained dlu run."""
  if not workdir or not os.path.isdir(workdir):
    raise UsageError(f"--workdir={workdir!r} is not a directory: expected the workdir of a dlu run")
  cfg = dlu_flags.config_from_flagfile(os.path.join(workdir, "flags.txt"), **overrides)
  exp = build(cfg, workdir)
  directory, step = selection.checkpoint_to_load(workdir, cfg.checkpoint)
  ckpt = checkpointing.Checkpointer(directory, keep=cfg.keep_checkpoints)
  try:
    state, _ = restore_or_init(exp, ckpt, step)
  finally:
    ckpt.close()
  return exp, state


def check_writable(workdir: str) -> None:
  """Fail before training if results could not be written there."""
  probe = os.path.join(workdir, f".write_test_{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("x" * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"--workdir={workdir} is not writable: {e.strerror or e}") from None


def write_embeddings(
  exp: Experiment, state: Any, path: str, embeddings: np.ndarray | None = None
) -> None:
  """`embeddings` and `labels` of the test split (labels -1 when the data has none), to an
  npz at `path` (lead process). `embeddings`: already computed ones, else they are."""
  if embeddings is None:
    if not exp.family.has_embedding:
      return
    embeddings = batched_eval.embed_split(
      parallel.make_embed(exp.family, exp.mesh),
      state,
      exp.dataset.x_test,
      mesh=exp.mesh,
      batch_size=exp.ctx.batch_size,
    )
  if parallel.is_lead_process():
    y = exp.dataset.y_test
    labels = y if y is not None else np.full(len(embeddings), -1, np.int32)
    tmp = path + ".tmp.npz"
    np.savez(tmp, embeddings=embeddings, labels=labels)
    os.replace(tmp, path)
