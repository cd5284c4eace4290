"""train_and_evaluate: validate, build, resume, train, evaluate, log, checkpoint."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from dlu import checkpointing, data, device_data, evaluation, families, parallel, steps
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
  jax.eval_shape(family.init_state, init_rng)  # Model/data mismatches surface here, not mid-run.
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
    labels = exp.dataset.y_test if exp.family.needs_label else None
    metrics = evaluation.mean_metrics(self.eval_sums, state, exp.dataset.x_test, exp.ctx.rng,
                                      mesh=exp.mesh, batch_size=exp.ctx.batch_size, y=labels)
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


# Flags that change how a run is driven or logged, not what its state holds.
_RUN_FLAGS = frozenset({"num_steps", "eval_every", "log_every", "checkpoint_every", "workdir",
                        "keep_checkpoints", "eval_batch_size", "num_images", "parallelism",
                        "debug_nans", "data_dir", "idx_dir", "steps_per_dispatch"})


def _differing_flags(workdir: str, cfg: dlu_flags.Config) -> list[str]:
  try:
    old = dlu_flags.config_from_flagfile(os.path.join(workdir, "flags.txt"))
  except UsageError:
    return []
  return [f"--{k} (checkpoint {getattr(old, k)!r}, now {v!r})" for k, v in sorted(vars(cfg).items())
          if k not in _RUN_FLAGS and getattr(old, k, v) != v]


def restore_or_init(exp: Experiment, ckpt: checkpointing.Checkpointer):
  """(state, resumed): the workdir's latest checkpoint, or a fresh state."""
  init, abstract_state = steps.make_init(exp.family, exp.mesh)
  try:
    state = ckpt.restore(abstract_state)
  except checkpointing.CheckpointError as e:
    differing = _differing_flags(exp.ctx.workdir, exp.cfg)
    if differing:
      raise UsageError(f"{exp.ctx.workdir} holds a checkpoint of a different model; flags that "
                       f"differ: {', '.join(differing)}. Use another --workdir") from None
    earlier = [s for s in ckpt.manager.all_steps() if s < e.step]
    hint = (f"; move {e.path} aside to resume from step {max(earlier)}" if earlier else
            "; move it aside to start over")
    raise UsageError(f"{e}{hint}") from None
  return (init(exp.init_rng), False) if state is None else (state, True)


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


class PreemptionNotice:
  """Turns SIGTERM (a scheduler's pre-emption notice) into a flag the loop polls."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(cfg: dlu_flags.Config, workdir: str) -> dict[str, float]:
  """Trains to `cfg.num_steps`, resuming from `workdir` if it holds a checkpoint.

  Returns the final eval metrics.
  """
  exp = build(cfg, workdir)
  lead = parallel.is_lead_process()
  check_writable(workdir)
  if cfg.debug_nans:
    jax.config.update("jax_debug_nans", True)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
  writer = MetricWriter(workdir, enabled=lead)
  progress = ProgressLine(cfg.num_steps, batch_size=exp.sampler.global_batch_size, enabled=lead)
  try:
    with PreemptionNotice() as preemption:
      return _train(exp, workdir, ckpt, writer, progress, preemption)
  finally:
    ckpt.close()
    writer.close()


def _train(exp: Experiment, workdir: str, ckpt: checkpointing.Checkpointer, writer: MetricWriter,
           progress: ProgressLine, preemption: PreemptionNotice) -> dict[str, float]:
  cfg, lead = exp.cfg, parallel.is_lead_process()
  state, resumed = restore_or_init(exp, ckpt)
  if resumed:
    writer.drop_rows_after(int(state.step))
  if lead:
    processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    print(f"{'Resuming' if resumed else 'Training'} {cfg.model} on {exp.dataset.name} "
          f"{f'from step {int(state.step)} ' if resumed else ''}in {workdir} "
          f"({jax.device_count()} {jax.default_backend()} device(s){processes}, "
          f"global batch {exp.sampler.global_batch_size})", flush=True)
    with open(os.path.join(workdir, "flags.txt"), "w") as f:
      f.write(cfg.to_flagfile())
    writer.write_hparams(vars(cfg))
  evaluate = Evaluator(exp, writer, progress)
  train_step = steps.make_train_step(exp.family, exp.mesh, parallelism=cfg.parallelism)
  pmap = cfg.parallelism == "pmap"
  host_state = parallel.unreplicate if pmap else (lambda s: s)

  feed = device_data.make_feed(exp.family, exp.mesh, exp.dataset.x_train, exp.sampler, train_step,
                               exp.train_rng, y_train=exp.dataset.y_train,
                               parallelism=cfg.parallelism,
                               steps_per_dispatch=cfg.steps_per_dispatch)
  boundaries = (cfg.log_every, cfg.checkpoint_every, cfg.eval_every,
                *exp.family.step_boundaries())

  step = int(state.step)
  if pmap:
    state = parallel.replicate_for_pmap(jax.device_get(state))
  progress.start(step)
  eval_metrics, last_metrics = {}, None
  window = parallel.DispatchWindow()
  t0 = time.perf_counter()
  while step < cfg.num_steps:
    state = exp.family.before_step(state, step)
    n = device_data.dispatch_length(step, cfg.num_steps, cfg.steps_per_dispatch, boundaries)
    state, last_metrics = feed(state, step, n)
    window.push(last_metrics)
    step += n
    if t0 is not None:
      jax.block_until_ready(last_metrics)
      if lead:
        what = "step" if n == 1 else f"dispatch ({n} steps)"
        print(f"First {what} (compilation included) took {time.perf_counter() - t0:.1f} s",
              flush=True)
      t0 = None
    final = step == cfg.num_steps
    logging_now = step % cfg.log_every == 0 or final
    saving_now = step % cfg.checkpoint_every == 0 or final
    if logging_now or saving_now:
      metrics = jax.device_get(host_state(last_metrics))
      _check_finite(step, metrics)  # Before any save: a checkpoint never holds NaN.
      if logging_now:
        rate = progress.report(step, metrics, keys=exp.family.progress_keys)
        writer.write_scalars(step, "train", {**metrics, "steps_per_s": rate})
      if saving_now:
        ckpt.save(step, host_state(state))
    if step % cfg.eval_every == 0 or final:
      eval_metrics = evaluate(step, host_state(state), final=final)
      progress.start(step)  # eval time does not count against steps/s
    if preemption.received and not final:
      _check_finite(step, jax.device_get(host_state(last_metrics)))
      ckpt.save(step, host_state(state))
      ckpt.wait()
      print(f"SIGTERM received: saved a checkpoint at step {step} in {workdir}; "
            "rerun the same command to resume", flush=True)
      return eval_metrics

  state = host_state(state)
  if last_metrics is None:  # Already at --num_steps: evaluate what the checkpoint holds.
    eval_metrics = evaluate(step, state, final=True)
  write_embeddings(exp, state, os.path.join(workdir, "embeddings_test.npz"))
  ckpt.wait()
  if lead:
    print_summary(workdir)
  return eval_metrics


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
