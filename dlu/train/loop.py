"""train_and_evaluate: one run, from its Config to its test scores, in one file.

A run goes through the sections below, in this order:

  set-up       the run built from its Config (every check of bad input; nothing written yet),
               the workdir checked and locked
  state        the latest checkpoint restored (or a fresh state), model selection replayed
  data + step  the family's train step jitted over the mesh, and the feed that runs it on
               training batches (`make_feed`: the seam for code that drives the steps itself)
  evaluation   writers, the evaluators on the validation split, early stopping and the best
               checkpoint (`dlu.train.selection`)
  checkpoints  periodic saves; the pre-emption save on SIGTERM; what a full disk keeps
  loop         dispatches and the periodic work after each; the test split scored once, at
               the end

The family's pure functions (`dlu.families`) define what one step computes; everything a
run does around them is here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np

from dlu import config, data, evaluators
from dlu.data import feeds, subsets
from dlu.errors import RunFailure, UsageError
from dlu.runtime import checkpointing, metric_writers, parallel, peaks
from dlu.runtime.periodic import PeriodicCallback, Profile, ReportProgress
from dlu.runtime.preemption import Preempted, PreemptionNotice
from dlu.train import experiment, selection, workspace
from dlu.train.experiment import Experiment

# ---------------------------------------------------------------------------------------------
# Set-up.


@dataclasses.dataclass
class _Run:
  """What the sections share: the built run and what it writes through (opened in order,
  closed by `close`)."""

  exp: Experiment
  preemption: PreemptionNotice
  ckpt: checkpointing.Checkpointer
  selector: selection.ModelSelection | None = None
  writer: metric_writers.MetricWriter | None = None
  profile: Profile | None = None
  evaluation: evaluators.Evaluation | None = None

  @property
  def cfg(self) -> config.Config:
    return self.exp.cfg

  @property
  def workdir(self) -> str:
    return self.exp.ctx.workdir

  def close(self, *, quiet: bool) -> None:
    """Closes what was opened; raises the first error unless `quiet` (an error in flight is
    the one reported)."""
    first = None
    for r in (self.profile, self.selector, self.ckpt, self.writer):
      try:
        if r is not None:
          r.close()
      except Exception as e:  # pylint: disable=broad-except
        first = first or e
    if first is not None and not quiet:
      raise first


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
      workspace.check_workdir(workdir)
      created = workspace.check_writable(workdir)
      lock = workspace.WorkdirLock(workdir, enabled=lead)
      lock.acquire()
      if lock.stale_note():
        print(f"warning: {lock.stale_note()}", flush=True)
      if cfg.debug_nans:
        jax.config.update("jax_debug_nans", True)
      run = _Run(
        exp,
        preemption,
        checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints),
      )
      try:
        result = _train(run, schedule)
      except BaseException:
        run.close(quiet=True)
        raise
      run.close(quiet=False)
      return result
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
        workspace.remove_if_empty(workdir)


def _train(run: _Run, schedule: Any) -> dict[str, float]:
  """State, writers, feed, then the loop; a finished run is reported, not retrained."""
  state, resumed = _restore(run)
  if state is None:
    return metric_writers.last_row(os.path.join(run.workdir, "metrics.jsonl"), "test")
  run.preemption.training()  # From here on, the workdir is written to.
  run.selector.drop_after(int(state.step))
  _open_evaluation(run, schedule, state, resumed)
  feed = make_feed(run.exp, start_step=int(state.step))
  try:
    return _loop(run, state, feed)
  finally:
    feed.close()  # stops input worker processes, also on errors


# ---------------------------------------------------------------------------------------------
# State.


def _restore(run: _Run) -> tuple[Any, bool]:
  """(state, resumed): the latest checkpoint or a fresh state, with model selection replayed
  as the uninterrupted run decided; (None, True) when the workdir is already trained."""
  cfg, workdir, ckpt = run.cfg, run.workdir, run.ckpt
  latest = ckpt.latest_step()
  if latest is not None and latest > cfg.num_steps:
    raise UsageError(
      f"--num_steps={cfg.num_steps} is below the step of the checkpoint in "
      f"{ckpt.directory} ({latest}); give --num_steps >= {latest} or use another --workdir"
    )
  state, resumed = experiment.restore_or_init(run.exp, ckpt)
  step = int(state.step)
  run.selector = selection.ModelSelection(cfg, workdir)
  if resumed:  # Early stopping and the best checkpoint decide as the uninterrupted run did.
    run.selector.replay(selection.read_rows(workdir, selection.VALID, step))
  if resumed and (step >= cfg.num_steps or run.selector.should_stop):
    if parallel.is_lead_process():
      why = "--num_steps" if step >= cfg.num_steps else "stopped early"
      print(f"{workdir} is already trained to step {step} ({why}); nothing to do")
      workspace.print_summary(workdir)
    return None, True
  return state, resumed


# ---------------------------------------------------------------------------------------------
# Data and step.


def make_feed(
  exp: Experiment, *, start_step: int = 0, num_steps: int | None = None
) -> feeds.DeviceFeed | feeds.HostFeed | feeds.StreamFeed:
  """The family's train step jitted over the mesh (`--parallelism`), fed with training
  batches as `--input_pipeline` chooses: `state, metrics = feed(state, step, n)` runs steps
  step..step+n-1 (n <= --steps_per_dispatch) on the batches a run from `start_step` sees.
  Call `feed.close()` when done."""
  cfg = exp.cfg
  train_step = parallel.make_train_step(exp.family, exp.mesh, parallelism=cfg.parallelism)
  return feeds.make_feed(
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
    start_step=start_step,
    num_steps=cfg.num_steps if num_steps is None else num_steps,
    data_workers=cfg.data_workers,
  )


def step_cost(exp: Experiment, feed: Any, state: Any) -> tuple[float | None, float | None]:
  """(FLOPs of one training step, the FLOP/s peak of the run's devices) for the progress
  line's TFLOP/s and MFU, found once per run (the step lowered, not compiled or run); the lead
  process says what it found. Either is None when unknown."""
  flops = feed.flops_per_step(state) if hasattr(feed, "flops_per_step") else None
  dtype = str(getattr(exp.cfg, "compute_dtype", "float32"))
  peak, how = peaks.run_peak(jax.devices(), dtype) if flops else (None, "")
  if parallel.is_lead_process():
    if flops is None:
      print("TFLOP/s and MFU not logged: XLA gave no FLOP count for the train step", flush=True)
    elif peak is None:
      print(
        f"Train step: {flops / 1e9:.4g} GFLOP; MFU not logged: {how} (dlu/runtime/peaks.py)",
        flush=True,
      )
    else:
      print(f"Train step: {flops / 1e9:.4g} GFLOP; MFU against {how}", flush=True)
  return flops, peak


class NonFiniteError(RunFailure):
  """A train metric became NaN or infinite; the last good checkpoint is kept."""


def check_finite(step: int, metrics: dict) -> None:
  for name, value in sorted(metrics.items()):
    if not np.all(np.isfinite(value)):
      raise NonFiniteError(
        f"non-finite {name} ({value}) at step {step}; the last good checkpoint is kept"
      )


# ---------------------------------------------------------------------------------------------
# Evaluation.


def _open_evaluation(run: _Run, schedule: Any, state: Any, resumed: bool) -> None:
  """The writers (rows after a resumed step dropped), the profiler, the evaluators, and the
  run's files (flags.txt, preprocessing.json, hparams)."""
  exp, cfg, workdir = run.exp, run.cfg, run.workdir
  lead, step = parallel.is_lead_process(), int(state.step)
  run.writer = metric_writers.create_default_writer(workdir, lead=lead)
  first, count = config.profile_window(cfg)
  run.profile = Profile(workdir, first_step=first, num_steps=count, enabled=lead)
  on = selection.VALID if exp.dataset.x_valid is not None else "test"
  run.evaluation = evaluators.Evaluation(exp, run.writer, schedule, on=on)
  if resumed:
    metric_writers.drop_rows_after(run.writer, step)
  if lead:
    processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    print(
      f"{'Resuming' if resumed else 'Training'} {cfg.model} on {exp.dataset.name} "
      f"{f'from step {step} ' if resumed else ''}in {workdir} "
      f"({jax.device_count()} {jax.default_backend()} device(s){processes}, "
      f"global batch {exp.sampler.global_batch_size})",
      flush=True,
    )
    if exp.dataset.is_series:
      print(f"Series: {exp.dataset.preprocessing.describe()}", flush=True)
    if exp.dataset.is_text:
      print(f"Text: {data.describe(exp.dataset)}", flush=True)
    if cfg.class_balance:
      ds = exp.dataset
      print(subsets.describe_balance(cfg.class_balance, ds.y_train, ds.num_classes), flush=True)
    workspace.write_flags(workdir, cfg, step)
    workspace.save_preprocessing(workdir, exp.dataset.preprocessing)
    replace = not resumed or cfg.allow_flag_changes
    workspace.save_data_fingerprint(workdir, exp.dataset, replace=replace)
    run.writer.write_hparams(vars(cfg))


def _evaluate(run: _Run, step: int, state: Any, last_metrics: Any, save: Any, final: bool):
  """The evaluators at `step` (SIGTERM meanwhile stops at once) and model selection on their
  validation scores; returns the eval metrics."""
  cfg, evaluation, selector = run.cfg, run.evaluation, run.selector
  with run.preemption.no_step_running(f"the evaluation at step {step}"):
    eval_metrics = evaluation(step, _host(cfg, state), final=final)
  if selector.active and evaluation.on == selection.VALID:
    flat = evaluators.flat_scalars(eval_metrics)
    if selector(step, flat, _host(cfg, state)) and not final:
      check_finite(step, jax.device_get(_host(cfg, last_metrics)))
      save(step, final=True, state=state)
      if parallel.is_lead_process():
        watch = selector.stopping
        print(
          f"Early stopping at step {step}: validation {watch.metric} has not improved "
          f"for {selector.patience} evals (best {watch.best:.6g} at step "
          f"{watch.best_step})",
          flush=True,
        )
  return eval_metrics


def _final_scores(run: _Run, step: int, state: Any, eval_metrics: dict) -> dict:
  """The test split, scored once (when evals scored the validation split), and the test
  embeddings."""
  evaluation = run.evaluation
  if evaluation.on == selection.VALID:
    eval_metrics = evaluation.final_scores(step, state, eval_metrics, run.selector.summary())
  experiment.write_test_embeddings(
    run.exp, state, evaluation.inputs.cached_embeddings("test", step)
  )
  return eval_metrics


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def _host(cfg: config.Config, tree: Any) -> Any:
  """One copy of a state or metrics (pmap keeps one per device)."""
  return parallel.unreplicate(tree) if cfg.parallelism == "pmap" else tree


def _save_and_stop_on_preemption(run: _Run, step: int, state: Any, last_metrics: Any) -> None:
  check_finite(step, jax.device_get(_host(run.cfg, last_metrics)))
  run.ckpt.save(step, _host(run.cfg, state))
  run.ckpt.wait()
  print(
    f"SIGTERM received: saved a checkpoint at step {step} in {run.workdir}; "
    "rerun the same command to resume",
    flush=True,
  )


def _write_failure(run: _Run, step: int, e: OSError | checkpointing.SaveError) -> RunFailure:
  """A full disk: say where, and what is kept."""
  kept = run.ckpt.kept_step()
  what = (
    str(e)
    if isinstance(e, checkpointing.SaveError)
    else f"cannot write {e.filename or run.workdir} ({e.strerror or e})"
  )
  return RunFailure(
    f"{what} at step {step}; "
    + (f"the last good checkpoint (step {kept}) is kept" if kept else "no checkpoint is kept")
  )


# ---------------------------------------------------------------------------------------------
# Loop.


def _loop(run: _Run, state: Any, feed: Any) -> dict[str, float]:
  exp, cfg, evaluation, selector = run.exp, run.cfg, run.evaluation, run.selector
  lead = parallel.is_lead_process()
  # Periodic work, in the order it happens after a dispatch. Train metrics are fetched and
  # checked for NaN before they are logged or the state is saved: no checkpoint holds one.
  report = ReportProgress(
    cfg.num_steps,
    every_steps=cfg.log_every,
    batch_size=exp.sampler.global_batch_size,
    writer=run.writer,
    keys=exp.family.progress_keys,
    enabled=lead,
  )
  save = PeriodicCallback(
    every_steps=cfg.checkpoint_every,
    callback=lambda step, state: run.ckpt.save(step, _host(cfg, state)),
  )
  boundaries = (
    report.every_steps,
    save.every_steps,
    *evaluation.boundaries(),
    *exp.family.step_boundaries(),
  )

  step = int(state.step)
  if cfg.parallelism == "pmap":
    state = parallel.replicate_for_pmap(jax.device_get(state))
  report.flops_per_step, report.peak_flops = step_cost(exp, feed, state)
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
      run.profile(step, last_metrics, final=final)
      if report.due(step, final) or save.due(step, final):
        metrics = jax.device_get(_host(cfg, last_metrics))
        check_finite(step, metrics)
        report(step, final=final, metrics=metrics)
        save(step, final=final, state=state)
      if evaluation.due(step, final) and not (run.preemption.received and not final):
        eval_metrics = _evaluate(run, step, state, last_metrics, save, final)
        report.restart(step)  # eval time does not count against steps/s
      if run.preemption.received and not final:
        _save_and_stop_on_preemption(run, step, state, last_metrics)
        return eval_metrics

    state = _host(cfg, state)
    eval_metrics = _final_scores(run, step, state, eval_metrics)
    run.ckpt.wait()
    selector.wait()
  except (OSError, checkpointing.SaveError) as e:
    raise _write_failure(run, step, e) from e
  if lead:
    workspace.print_summary(run.workdir)
  return eval_metrics
