"""train_and_evaluate: validate, build, resume, train, evaluate, log, checkpoint."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np

from dlu import checkpointing, data, evaluation, families, parallel, steps
from dlu import flags as dlu_flags
from dlu.errors import UsageError
from dlu.families import DataSpec, EvalContext, Family
from dlu.logging_utils import MetricWriter, ProgressLine


class NonFiniteError(RuntimeError):
  """A train metric became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Experiment:
  """Everything a run needs, built from a Config without writing anything."""
  cfg: dlu_flags.Config
  dataset: data.ImageData
  spec: DataSpec
  family: Family
  sampler: data.BatchSampler
  mesh: Any
  ctx: EvalContext
  train_rng: jax.Array
  init_rng: jax.Array


def _global_batch_size(cfg, num_train: int) -> int:
  if cfg.optimizer != "gd":
    return cfg.batch_size
  # Full-batch gradient descent: the whole split, less what does not split over devices.
  n = jax.device_count()
  return num_train // n * n


def _check_finite(step: int, metrics: dict) -> None:
  for name, value in sorted(metrics.items()):
    if not np.all(np.isfinite(value)):
      raise NonFiniteError(f"non-finite {name} ({value}) at step {step}; "
                           "the last good checkpoint is kept")


def build(cfg: dlu_flags.Config, workdir: str) -> Experiment:
  """Everything that can fail on bad input, before the workdir is touched."""
  if not workdir:
    raise UsageError("--workdir is required: the folder for checkpoints, metrics and images")
  dlu_flags.validate(cfg)
  dataset = data.load(cfg.dataset, data_dir=cfg.data_dir, idx_dir=cfg.idx_dir)
  spec = DataSpec(dataset.image_shape, dataset.num_classes, len(dataset.x_train), cfg.pixel_range)
  batch_size = _global_batch_size(cfg, spec.num_train)
  parallel.check_batch_size(batch_size)
  if batch_size > spec.num_train:
    raise UsageError(f"--batch_size={batch_size} is larger than the training split "
                     f"({spec.num_train} examples of {cfg.dataset})")
  sampler = data.BatchSampler(spec.num_train, batch_size, seed=cfg.seed,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
  family = families.get(cfg.model)(cfg, spec)
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(cfg.seed), 3)
  mesh = parallel.make_mesh()
  ctx = EvalContext(mesh=mesh, batch_size=evaluation.round_batch_size(cfg.eval_batch_size),
                    rng=eval_rng, workdir=workdir, cfg=cfg)
  family.prepare(dataset, ctx)
  return Experiment(cfg, dataset, spec, family, sampler, mesh, ctx, train_rng, init_rng)


class Evaluator:
  """Test-split metrics, the family's own metrics and image grids at one step."""

  def __init__(self, exp: Experiment, writer: MetricWriter, progress: ProgressLine | None = None):
    self.exp, self.writer, self.progress = exp, writer, progress
    self.eval_sums = steps.make_eval_sums(exp.family, exp.mesh)
    self.make_images = steps.make_images(exp.family, exp.mesh)
    images = exp.dataset.x_test[:exp.cfg.num_images]
    self.image_batch = {"image": jax.make_array_from_process_local_data(
        parallel.replicated(exp.mesh), images)}

  def __call__(self, step: int, state, *, final: bool = False, split: str = "eval") -> dict:
    exp = self.exp
    metrics = evaluation.mean_metrics(self.eval_sums, state, exp.dataset.x_test, exp.ctx.rng,
                                      mesh=exp.mesh, batch_size=exp.ctx.batch_size)
    metrics.update(exp.family.split_metrics(state, exp.dataset, exp.ctx))
    if final:
      metrics.update(exp.family.final_metrics(state, exp.dataset, exp.ctx))
    self.writer.write_scalars(step, split, metrics)
    if self.progress is not None:
      self.progress.report_eval(step, metrics)
    self.writer.write_images(step, jax.device_get(self.make_images(state, self.image_batch,
                                                                   exp.ctx.rng)))
    self.writer.flush()
    return metrics


def restore_or_init(exp: Experiment, ckpt: checkpointing.Checkpointer):
  init, abstract_state = steps.make_init(exp.family, exp.mesh)
  state = ckpt.restore(abstract_state)
  return (init(exp.init_rng), False) if state is None else (state, True)


def train_and_evaluate(cfg: dlu_flags.Config, workdir: str) -> dict[str, float]:
  """Trains to `cfg.num_steps`, resuming from `workdir` if it holds a checkpoint.

  Returns the final eval metrics.
  """
  exp = build(cfg, workdir)
  lead = parallel.is_lead_process()
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
  writer = MetricWriter(workdir, enabled=lead)
  progress = ProgressLine(cfg.num_steps, batch_size=exp.sampler.global_batch_size, enabled=lead)
  try:
    state, resumed = restore_or_init(exp, ckpt)
    print(f"{'Resuming' if resumed else 'Training'} {cfg.model} on {exp.dataset.name} "
          f"{f'from step {int(state.step)} ' if resumed else ''}in {workdir} "
          f"({jax.device_count()} {jax.default_backend()} device(s), "
          f"global batch {exp.sampler.global_batch_size})", flush=True)
    if lead:
      with open(os.path.join(workdir, "flags.txt"), "w") as f:
        f.write(cfg.to_flagfile())
      writer.write_hparams(vars(cfg))
    evaluate = Evaluator(exp, writer, progress)
    train_step = steps.make_train_step(exp.family, exp.mesh, parallelism=cfg.parallelism)
    pmap = cfg.parallelism == "pmap"
    host_state = parallel.unreplicate if pmap else (lambda s: s)

    step = int(state.step)
    if pmap:
      state = parallel.replicate_for_pmap(jax.device_get(state))
    progress.start(step)
    eval_metrics, last_metrics = {}, None
    t0 = time.perf_counter()
    while step < cfg.num_steps:
      state = exp.family.before_step(state, step)
      indices = exp.sampler.indices(step)
      local = {"image": exp.dataset.x_train[indices]}
      if exp.family.needs_index:
        local["index"] = indices.astype(np.int32)
      batch = parallel.pmap_batch(local) if pmap else parallel.global_batch(exp.mesh, local)
      state, last_metrics = train_step(state, batch, exp.train_rng)
      step += 1
      if t0 is not None:
        jax.block_until_ready(last_metrics)
        print(f"First step (compilation included) took {time.perf_counter() - t0:.1f} s",
              flush=True)
        t0 = None
      final = step == cfg.num_steps
      logging_now = step % cfg.log_every == 0 or final
      saving_now = step % cfg.checkpoint_every == 0 or final
      if logging_now or saving_now:
        metrics = jax.device_get(host_state(last_metrics))
        _check_finite(step, metrics)  # Before any save: a checkpoint never holds NaN.
        if logging_now:
          rate = progress.report(step, metrics)
          writer.write_scalars(step, "train", {**metrics, "steps_per_s": rate})
        if saving_now:
          ckpt.save(step, host_state(state))
      if step % cfg.eval_every == 0 or final:
        eval_metrics = evaluate(step, host_state(state), final=final)
        progress.start(step)  # eval time does not count against steps/s

    state = host_state(state)
    if last_metrics is None:  # Already at --num_steps: evaluate what the checkpoint holds.
      eval_metrics = evaluate(step, state, final=True)
    write_embeddings(exp, state, os.path.join(workdir, "embeddings_test.npz"))
    ckpt.wait()
    if lead:
      print_summary(workdir)
    return eval_metrics
  finally:
    ckpt.close()
    writer.close()


def write_embeddings(exp: Experiment, state, path: str) -> None:
  """`embeddings` and `labels` of the test split (labels -1 when the data has none)."""
  try:
    emb = evaluation.embed_split(steps.make_embed(exp.family, exp.mesh), state,
                                 exp.dataset.x_test, mesh=exp.mesh, batch_size=exp.ctx.batch_size)
  except NotImplementedError:
    return
  if parallel.is_lead_process():
    y = exp.dataset.y_test
    labels = y if y is not None else np.full(len(emb), -1, np.int32)
    tmp = path + ".tmp.npz"
    np.savez(tmp, embeddings=emb, labels=labels)
    os.replace(tmp, path)


def print_summary(workdir: str) -> None:
  w = os.path.abspath(workdir)
  print(f"\nResults in {w}:\n"
        f"  checkpoints:  {w}/checkpoints\n"
        f"  metrics:      {w}/metrics.jsonl\n"
        f"  images:       {w}/images\n"
        f"  embeddings:   {w}/embeddings_test.npz\n"
        f"  flags:        {w}/flags.txt\n"
        f"  TensorBoard:  tensorboard --logdir {w}", flush=True)
