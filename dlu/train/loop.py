"""train_and_evaluate: the training loop. Builds the run (`dlu.train.experiment`), resumes it,
dispatches steps, and calls its periodic work: train metrics and the progress line, checkpoints,
evaluators (`dlu.evaluators`) on the validation split, early stopping and the best checkpoint
(`dlu.train.selection`), and a pre-emption save on SIGTERM. The test split is scored once, at the
end."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from dlu import config, evaluators
from dlu.data import feeds
from dlu.errors import RunFailure, UsageError
from dlu.runtime import checkpointing, metric_writers, parallel
from dlu.runtime.periodic import PeriodicCallback, Profile, ReportProgress
from dlu.train import experiment, selection, workspace
from dlu.train.experiment import Experiment


class NonFiniteError(RunFailure):
  """A train metric became NaN or infinite; the last good checkpoint is kept."""


def check_finite(step: int, metrics: dict) -> None:
  for name, value in sorted(metrics.items()):
    if not np.all(np.isfinite(value)):
      raise NonFiniteError(
        f"non-finite {name} ({value}) at step {step}; the last good checkpoint is kept"
      )


class Preempted(Exception):
  """SIGTERM arrived before training started (the run ends with nothing written), or while no
  step was running (`during` says what it stopped; what was saved is kept)."""

  def __init__(self, during: str | None = None):
    super().__init__(during or "start-up")
    self.during = during


class PreemptionNotice:
  """SIGTERM, a scheduler's pre-emption notice. Before `training()` it raises Preempted, as
  nothing is written yet; after, it sets `received`, which the loop polls to save and stop,
  and restores SIGTERM's default action, so that a second SIGTERM ends the process at once
  (e.g. one stuck in a step)."""

  def __init__(self):
    self.received = False
    self._training = False
    self._idle: str | None = None
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def training(self) -> None:
    self._training = True

  @contextlib.contextmanager
  def no_step_running(self, what: str):
    """While `what` (e.g. an evaluation) runs, SIGTERM stops the run at once (Preempted): there
    is no step to finish, and the checkpoints saved so far are what a rerun resumes from."""
    self._idle = what
    try:
      yield
    finally:
      self._idle = None

  def _handle(self, signum, frame):
    del frame
    if not self._training:
      raise Preempted()
    self.received = True
    signal.signal(signum, signal.SIG_DFL)
    if self._idle:
      raise Preempted(self._idle)

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(cfg: config.Config, workdir: str) -> dict[str, float]:
  """Trains to `cfg.num_steps`, resuming from `workdir` if it holds a checkpoint.

  Returns the final eval metrics. Every refusal (UsageError), and a SIGTERM before
  training starts, leaves the workdir as it was.
  """
  lead = parallel.is_lead_process()
  lock, created = None, False
  with PreemptionNotice() as preemption:
    try:
      exp = experiment.build(cfg, workdir)
      schedule = evaluators.training_schedule(exp)
      experiment.check_workdir(workdir)
      created = experiment.check_writable(workdir)
      lock = workspace.WorkdirLock(workdir, enabled=lead)
      lock.acquire()
      if lock.stale_note():
        print(f"warning: {lock.stale_note()}", flush=True)
      if cfg.debug_nans:
        jax.config.update("jax_debug_nans", True)
      return _start(exp, schedule, preemption)
    except Preempted as e:
      if lead and e.during:
        print(
          f"SIGTERM received during {e.during}: stopped at once; the checkpoints saved so far "
          f"are kept in {workdir}; rerun the same command to resume",
          flush=True,
        )
      elif lead:
        print(f"SIGTERM received before training started; nothing written in {workdir}")
      return {}
    finally:
      if lock is not None:
        lock.release()
      if created:
        experiment.remove_if_empty(workdir)


def _start(exp: Experiment, schedule, preemption: PreemptionNotice) -> dict[str, float]:
  """Restores or initialises the state, then opens the writers and trains."""
  cfg, workdir, lead = exp.cfg, exp.ctx.workdir, parallel.is_lead_process()
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
  writer = profile = selector = None
  try:
    latest = ckpt.latest_step()
    if latest is not None and latest > cfg.num_steps:
      raise UsageError(
        f"--num_steps={cfg.num_steps} is below the step of the checkpoint in "
        f"{ckpt.directory} ({latest}); give --num_steps >= {latest} or use another --workdir"
      )
    state, resumed = experiment.restore_or_init(exp, ckpt)
    step = int(state.step)
    selector = selection.ModelSelection(cfg, workdir)
    if resumed:  # Early stopping and the best checkpoint decide as the uninterrupted run did.
      selector.replay(selection.read_rows(workdir, selection.VALID, step))
    if resumed and (step >= cfg.num_steps or selector.should_stop):
      if lead:
        why = "--num_steps" if step >= cfg.num_steps else "stopped early"
        print(f"{workdir} is already trained to step {step} ({why}); nothing to do")
        print_summary(workdir)
      return metric_writers.last_row(os.path.join(workdir, "metrics.jsonl"), "test")
    preemption.training()  # From here on, the workdir is written to.
    selector.drop_after(step)
    writer = metric_writers.create_default_writer(workdir, lead=lead)
    profile = Profile(
      workdir,
      first_step=min(cfg.log_every, cfg.num_steps),
      num_steps=cfg.profile_steps,
      enabled=lead,
    )
    on = selection.VALID if exp.dataset.x_valid is not None else "test"
    evaluation = evaluators.Evaluation(exp, writer, schedule, on=on)
    result = _train(
      exp, workdir, ckpt, writer, evaluation, profile, preemption, state, resumed, selector
    )
  except BaseException:
    _close(profile, selector, ckpt, writer, quiet=True)  # The error in flight is reported.
    raise
  _close(profile, selector, ckpt, writer, quiet=False)
  return result


def _close(*resources, quiet: bool) -> None:
  """Closes each of `resources` (None: skipped); raises the first error unless `quiet`."""
  first = None
  for r in resources:
    try:
      if r is not None:
        r.close()
    except Exception as e:  # pylint: disable=broad-except
      first = first or e
  if first is not None and not quiet:
    raise first


def _train(
  exp: Experiment,
  workdir: str,
  ckpt: checkpointing.Checkpointer,
  writer: metric_writers.MetricWriter,
  evaluation: evaluators.Evaluation,
  profile: Profile,
  preemption: PreemptionNotice,
  state,
  resumed: bool,
  selector: selection.ModelSelection,
) -> dict[str, float]:
  cfg, lead = exp.cfg, parallel.is_lead_process()
  if resumed:
    metric_writers.drop_rows_after(writer, int(state.step))
  if lead:
    processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    print(
      f"{'Resuming' if resumed else 'Training'} {cfg.model} on {exp.dataset.name} "
      f"{f'from step {int(state.step)} ' if resumed else ''}in {workdir} "
      f"({jax.device_count()} {jax.default_backend()} device(s){processes}, "
      f"global batch {exp.sampler.global_batch_size})",
      flush=True,
    )
    experiment.write_flags(exp, int(state.step))
    experiment.save_preprocessing(exp)
    writer.write_hparams(vars(cfg))
  train_step = parallel.make_train_step(exp.family, exp.mesh, parallelism=cfg.parallelism)
  feed = feeds.make_feed(
    exp.family,
    exp.mesh,
    exp.dataset.x_train,
    exp.sampler,
    train_step,
    exp.train_rng,
    y_train=exp.dataset.y_train,
    parallelism=cfg.parallelism,
    steps_per_dispatch=cfg.steps_per_dispatch,
    input_pipeline=cfg.input_pipeline,
    start_step=int(state.step),
    num_steps=cfg.num_steps,
    data_workers=cfg.data_workers,
  )
  try:
    return _run(exp, workdir, ckpt, writer, evaluation, profile, preemption, state, feed, selector)
  finally:
    feed.close()  # stops input worker processes, also on errors


def _run(
  exp: Experiment,
  workdir: str,
  ckpt: checkpointing.Checkpointer,
  writer: metric_writers.MetricWriter,
  evaluation: evaluators.Evaluation,
  profile: Profile,
  preemption: PreemptionNotice,
  state: Any,
  feed: feeds.DeviceFeed | feeds.HostFeed | feeds.StreamFeed,
  selector: selection.ModelSelection,
) -> dict[str, float]:
  cfg, lead = exp.cfg, parallel.is_lead_process()
  pmap = cfg.parallelism == "pmap"
  host_state = parallel.unreplicate if pmap else (lambda s: s)
  # Periodic work, in the order it happens after a dispatch. Train metrics are fetched and
  # checked for NaN before they are logged or the state is saved: no checkpoint holds one.
  report = ReportProgress(
    cfg.num_steps,
    every_steps=cfg.log_every,
    batch_size=exp.sampler.global_batch_size,
    writer=writer,
    keys=exp.family.progress_keys,
    enabled=lead,
  )
  save = PeriodicCallback(
    every_steps=cfg.checkpoint_every,
    callback=lambda step, state: ckpt.save(step, host_state(state)),
  )
  boundaries = (
    report.every_steps,
    save.every_steps,
    *evaluation.boundaries(),
    *exp.family.step_boundaries(),
  )

  step = int(state.step)
  if pmap:
    state = parallel.replicate_for_pmap(jax.device_get(state))
  report.restart(step)
  eval_metrics, last_metrics = {}, None
  window = parallel.DispatchWindow()
  t0 = time.perf_counter()
  try:
    while step < cfg.num_steps and not selector.should_stop:
      state = exp.family.before_step(state, step)
      n = feeds.dispatch_length(step, cfg.num_steps, cfg.steps_per_dispatch, boundaries)
      state, last_metrics = feed(state, step, n)
      window.push(last_metrics)
      step += n
      if t0 is not None:
        jax.block_until_ready(last_metrics)
        if lead:
          what = "step" if n == 1 else f"dispatch ({n} steps)"
          print(
            f"First {what} (compilation included) took {time.perf_counter() - t0:.1f} s", flush=True
          )
        t0 = None
      final = step == cfg.num_steps
      profile(step, last_metrics, final=final)
      if report.due(step, final) or save.due(step, final):
        metrics = jax.device_get(host_state(last_metrics))
        check_finite(step, metrics)
        report(step, final=final, metrics=metrics)
        save(step, final=final, state=state)
      if evaluation.due(step, final) and not (preemption.received and not final):
        with preemption.no_step_running(f"the evaluation at step {step}"):
          eval_metrics = evaluation(step, host_state(state), final=final)
        report.restart(step)  # eval time does not count against steps/s
        if selector.active and evaluation.on == selection.VALID:
          flat = evaluators.flat_scalars(eval_metrics)
          if selector(step, flat, host_state(state)) and not final:
            check_finite(step, jax.device_get(host_state(last_metrics)))
            save(step, final=True, state=state)
            if lead:
              watch = selector.stopping
              print(
                f"Early stopping at step {step}: validation {watch.metric} has not improved "
                f"for {selector.patience} evals (best {watch.best:.6g} at step "
                f"{watch.best_step})",
                flush=True,
              )
      if preemption.received and not final:
        check_finite(step, jax.device_get(host_state(last_metrics)))
        ckpt.save(step, host_state(state))
        ckpt.wait()
        print(
          f"SIGTERM received: saved a checkpoint at step {step} in {workdir}; "
          "rerun the same command to resume",
          flush=True,
        )
        return eval_metrics

    state = host_state(state)
    if evaluation.on == selection.VALID:  # The test split, scored once.
      eval_metrics = evaluation.final_scores(step, state, eval_metrics, selector.summary())
    experiment.write_embeddings(
      exp,
      state,
      os.path.join(workdir, "embeddings_test.npz"),
      evaluation.inputs.cached_embeddings("test", step),
    )
    ckpt.wait()
    selector.wait()
  except (OSError, checkpointing.SaveError) as e:  # A full disk: say where, and what is kept.
    kept = ckpt.kept_step()
    what = (
      str(e)
      if isinstance(e, checkpointing.SaveError)
      else f"cannot write {e.filename or workdir} ({e.strerror or e})"
    )
    raise RunFailure(
      f"{what} at step {step}; "
      + (f"the last good checkpoint (step {kept}) is kept" if kept else "no checkpoint is kept")
    ) from e
  if lead:
    print_summary(workdir)
  return eval_metrics


def print_summary(workdir: str) -> None:
  w = os.path.abspath(workdir)
  print(
    f"\nResults in {w}:\n"
    f"  checkpoints:  {w}/checkpoints\n"
    f"  metrics:      {w}/metrics.jsonl\n"
    f"  images:       {w}/images\n"
    f"  embeddings:   {w}/embeddings_test.npz\n"
    f"  flags:        {w}/flags.txt\n"
    f"  TensorBoard:  tensorboard --logdir {w}",
    flush=True,
  )
