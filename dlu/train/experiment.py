"""A run, built from its Config: data, family, mesh, sampler and keys; its state restored or
initialised; a trained run loaded back from its workdir.

    exp = experiment.build(cfg, workdir)                    # every check of bad input, nothing written
    state, resumed = experiment.restore_or_init(exp, ckpt)  # the latest checkpoint, or a fresh state
    exp, state = experiment.restore_trained("workdirs/vae") # a trained run, read-only

`dlu.load_run` (`dlu.train.apply`) wraps the last for scripts and notebooks.

Training (`dlu.train.loop`), `experiments.evaluate` (`dlu.train.evaluate`) and
`experiments.augment` (`dlu.studies.few_shot`) all start here. Importing this module defines every
flag a run records in its flags.txt (it imports the families and the evaluators).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from dlu import config, data, evaluators, families
from dlu.data import columns, feeds, preprocessing, series, text
from dlu.errors import UsageError
from dlu.families import DataSpec, EvalContext, Family
from dlu.runtime import batched_eval, checkpointing, parallel
from dlu.train import selection, workspace


@dataclasses.dataclass
class Experiment:
  """Everything a run needs, built from a Config without writing anything."""

  cfg: config.Config
  dataset: data.Dataset
  spec: DataSpec
  family: Family
  sampler: data.BatchSampler
  mesh: Any
  ctx: EvalContext
  train_rng: jax.Array
  init_rng: jax.Array


def _global_batch_size(cfg: config.Config, num_train: int) -> int:
  if cfg.optimizer != "gd":
    return cfg.batch_size
  # Full-batch gradient descent: the whole split, less what does not split over devices.
  n = jax.device_count()
  return num_train // n * n


def table_options(cfg: config.Config, workdir: str) -> data.TableOptions:
  """How a run reads tables and vectors: the preprocessing its workdir holds (resumed,
  evaluated and applied runs scale exactly as they trained), else that of the run it starts
  from (--init_from: DEC/IDEC), else fitted anew on its training split."""
  stored = None
  for directory in (workdir, getattr(cfg, "init_from", None)):
    path = os.path.join(directory or "", workspace.PREPROCESSING_FILE)
    if directory and os.path.isfile(path):
      stored = preprocessing.Preprocessing.load(path)
      break
    path = os.path.join(directory or "", series.FILE_NAME)
    if directory and os.path.isfile(path):
      stored = series.SeriesPreprocessing.load(path)
      break
    path = os.path.join(directory or "", text.FILE_NAME)
    if directory and os.path.isfile(path):
      stored = text.TextPreprocessing.load(path)
      break
  return data.TableOptions(
    label_column=cfg.label_column,
    test_fraction=cfg.test_fraction,
    seed=cfg.seed,
    impute=cfg.impute,
    feature_scaling=cfg.feature_scaling,
    preprocessing=stored,
    model_imputes=cfg.model in families.names() and families.get(cfg.model).takes_missing,
    # Models that read categories one-hot only fit every category one-hot.
    embed_levels=(
      cfg.embed_levels
      if cfg.model in families.names() and families.get(cfg.model).takes_embedded
      else 0
    ),
    series_length=cfg.series_length,
    series_scaling=cfg.series_scaling,
    overrides=columns.Overrides.from_flags(
      getattr(cfg, "categorical_columns", ()),
      getattr(cfg, "numeric_columns", ()),
      getattr(cfg, "drop_columns", ()),
      getattr(cfg, "id_column", None),
    ),
    encoding=getattr(cfg, "encoding", None),
    text=text.TextOptions(cfg.text_column, cfg.tokenizer, cfg.vocab_size, cfg.max_length),
  )


def build(cfg: config.Config, workdir: str) -> Experiment:
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
  if dataset.is_series and not families.get(cfg.model).takes_series:
    takers = ", ".join(n for n in families.names() if families.get(n).takes_series)
    raise UsageError(
      f"--model={cfg.model} does not take time series ({cfg.dataset}); use --model= one of {takers}"
    )
  if dataset.is_text != families.get(cfg.model).takes_text:
    takers = ", ".join(n for n in families.names() if families.get(n).takes_text)
    raise UsageError(
      f"--model={cfg.model} does not take text ({cfg.dataset}); use --model= one of {takers}"
      if dataset.is_text
      else f"--model={cfg.model} takes text (--dataset=text:PATH); {cfg.dataset} is not text"
    )
  pre = dataset.preprocessing
  masked = getattr(pre, "impute", None) == "model"
  if masked and not families.get(cfg.model).takes_missing:
    takers = ", ".join(n for n in families.names() if families.get(n).takes_missing)
    raise UsageError(
      f"--impute=model: --model={cfg.model} cannot take missing cells; use --model= one of "
      f"{takers}, or --impute=mean|median"
    )
  schema = getattr(pre, "schema", None)
  spec = DataSpec(
    dataset.example_shape,
    dataset.num_classes,
    len(dataset.x_train),
    cfg.pixel_range,
    columns=schema.kinds() if schema is not None else (),
    embedded=schema.embedded() if schema is not None else (),
    masked=masked,
    vocab_size=dataset.preprocessing.vocab_size if dataset.is_text else None,
  )
  batch_size = _global_batch_size(cfg, spec.num_train)
  parallel.check_batch_size(batch_size)
  if batch_size > spec.num_train:
    devices = jax.device_count()
    fits = spec.num_train // devices * devices
    raise UsageError(
      f"--batch_size={batch_size} is larger than the training split "
      f"({spec.num_train} examples of {cfg.dataset})"
      + (f"; --batch_size={fits} or smaller fits it" if fits else "")
    )
  feeds.check_pipeline(
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


#: Where `--resume_from=last_intact` moves checkpoints that fail their checksums.
CORRUPT_DIR = "corrupt_checkpoints"


def _intact_state(exp: Experiment, ckpt: checkpointing.Checkpointer, abstract_state: Any) -> Any:
  """--resume_from=last_intact: the newest checkpoint that passes its checksums and restores;
  newer ones are moved to CORRUPT_DIR (left in place when loading read-only)."""
  for step in reversed(ckpt.all_steps()):
    try:
      state = ckpt.restore(abstract_state, step=step)
    except checkpointing.CheckpointError as e:
      print(f"warning: skipped {e}", flush=True)
      continue
    newer = [s for s in ckpt.all_steps() if s > step]
    if newer and not ckpt.read_only:
      aside = os.path.join(exp.ctx.workdir, CORRUPT_DIR)
      os.makedirs(aside, exist_ok=True)
      for s in newer:
        os.replace(ckpt.step_dir(s), os.path.join(aside, str(s)))
      ckpt.manager.reload()
      print(f"moved the checkpoints of steps {newer} to {aside}", flush=True)
    return state
  raise UsageError(f"{ckpt.directory} holds no intact checkpoint; move it aside to start over")


def restore_or_init(
  exp: Experiment, ckpt: checkpointing.Checkpointer, step: int | None = None
) -> tuple[Any, bool]:
  """(state, resumed): the workdir's latest checkpoint (or `step`), or a fresh state.

  A checkpoint is only resumed by the run that wrote it: run-defining flags that differ
  from its flags.txt are refused unless --allow_flag_changes (loaders, read-only, may
  override them).
  """
  init, abstract_state = parallel.make_init(exp.family, exp.mesh)
  workdir, cfg = exp.ctx.workdir, exp.cfg
  latest = ckpt.latest_step() if step is None else step
  if latest is None:
    return init(exp.init_rng), False
  differing = workspace.differing_flags(workdir, cfg)
  # Loaders (read-only) may override flags on purpose; only a resumed training is refused.
  if differing and not ckpt.read_only and not cfg.allow_flag_changes:
    raise UsageError(
      f"{workdir} holds a checkpoint of a different model or run; flags that differ: "
      f"{workspace.listed(differing)}. Rerun with the flags its flags.txt records, add "
      "--allow_flag_changes to continue it with these, or use another --workdir"
    )
  if not ckpt.read_only and not cfg.allow_flag_changes:  # resumed on the table it began with
    hint = "add --allow_flag_changes to continue on this one, "
    workspace.check_data_fingerprint(workdir, exp.dataset, hint=hint)
  if cfg.resume_from == "last_intact":
    return _intact_state(exp, ckpt, abstract_state), True
  try:
    state = ckpt.restore(abstract_state, step)
  except checkpointing.CheckpointError as e:
    if differing:
      raise UsageError(
        f"{workdir} holds a checkpoint of a different model; flags that "
        f"differ: {workspace.listed(differing)}. Use another --workdir"
      ) from None
    if isinstance(e.cause, str):  # Checksums: the files changed since they were saved.
      hint = (
        " (rerun with --resume_from=last_intact to resume from it)"
        if e.intact is not None
        else f": move {ckpt.directory} aside to start over"
      )
    else:
      earlier = [s for s in ckpt.all_steps() if s < e.step]
      hint = (
        f"; move {e.path} aside (or rerun with --resume_from=last_intact) to resume from "
        f"step {max(earlier)}"
        if earlier
        else "; move it aside to start over"
      )
    raise UsageError(f"{e}{hint}") from None
  return state, True


def restore_trained(workdir: str, **overrides: Any) -> tuple[Experiment, Any]:
  """The experiment a workdir's flags.txt records (with `overrides`), and the checkpointed
  state --checkpoint chooses (best, latest or a step; `overrides` may set it). UsageError
  when `workdir` holds no trained dlu run.

  Read-only: nothing in the workdir is created, cleaned up or deleted, so it works on a run
  that is still training (its latest finalised checkpoint).
  """
  if not workdir or not os.path.isdir(workdir):
    raise UsageError(f"--workdir={workdir!r} is not a directory: expected the workdir of a dlu run")
  cfg = config.config_from_flagfile(os.path.join(workdir, workspace.FLAGS_FILE), **overrides)
  exp = build(cfg, workdir)
  directory, step = selection.checkpoint_to_load(workdir, cfg.checkpoint)
  ckpt = checkpointing.Checkpointer(directory, read_only=True)
  try:
    state, _ = restore_or_init(exp, ckpt, step)
  finally:
    ckpt.close()
  return exp, state


def write_test_embeddings(
  exp: Experiment, state: Any, embeddings: np.ndarray | None = None
) -> None:
  """WORKDIR/embeddings_test.npz: the `embeddings` and labels of the test split (`embeddings`:
  already computed ones, else they are; nothing for families without an embedding)."""
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
  path = os.path.join(exp.ctx.workdir, workspace.EMBEDDINGS_FILE)
  workspace.write_embeddings(path, embeddings, exp.dataset.y_test)
