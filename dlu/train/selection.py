"""Model selection on the validation split: early stopping and the best checkpoint.

    selection = ModelSelection(cfg, workdir)
    selection.replay(rows)                    # resumed: the `valid` rows up to its step
    stop = selection(step, flat_metrics, state)  # after each validation eval

`--early_stopping_metric` stops a run once its validation metric has not improved by
`--early_stopping_min_delta` for `--early_stopping_patience` evals; `--keep_best_checkpoint`
keeps the state with the best validation value in WORKDIR/checkpoints_best beside the
latest ones. Both are functions of the sequence of validation rows, so a resumed run
rebuilds them from metrics.jsonl and decides as the uninterrupted run did.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from dlu.config import Config
from dlu.errors import UsageError
from dlu.metrics import higher_is_better
from dlu.runtime import checkpointing

#: Where the best checkpoint is kept, beside WORKDIR/checkpoints.
BEST_DIR = "checkpoints_best"
#: The row name of evals on the validation split.
VALID = "valid"


class Watch:
  """The best value of one metric so far, where it was, and evals since it improved."""

  def __init__(self, metric: str, *, min_delta: float = 0.0, flag: str = "--early_stopping_metric"):
    self.metric, self.min_delta, self.flag = metric, float(min_delta), flag
    self.higher = higher_is_better(metric)
    self.best: float | None = None
    self.best_step: int | None = None
    self.since_best = 0

  def update(self, step: int, metrics: Mapping[str, Any]) -> bool:
    """Takes the eval at `step`; True when it is a new best. Non-finite values never are."""
    if self.metric not in metrics:
      raise UsageError(
        f"{self.flag}={self.metric}: the validation rows have no such metric; they have "
        f"{', '.join(sorted(metrics)) or 'none'}"
      )
    value = float(metrics[self.metric])
    if self.best is None:
      improved = math.isfinite(value)
    elif self.higher:
      improved = value > self.best + self.min_delta
    else:
      improved = value < self.best - self.min_delta
    if improved:
      self.best, self.best_step, self.since_best = value, int(step), 0
    else:
      self.since_best += 1
    return improved


def read_rows(workdir: str, split: str, up_to: int) -> list[dict[str, Any]]:
  """The `split` rows of WORKDIR/metrics.jsonl at steps <= `up_to`, in order."""
  rows = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue  # A line cut short by a kill.
        if row.get("split") == split and row.get("step", up_to + 1) <= up_to:
          rows.append(row)
  except FileNotFoundError:
    pass
  return rows


class ModelSelection:
  """Early stopping and the best checkpoint of a run (each off unless its flag is set)."""

  def __init__(self, cfg: Config, workdir: str):
    self.stopping = (
      Watch(cfg.early_stopping_metric, min_delta=cfg.early_stopping_min_delta)
      if cfg.early_stopping_metric
      else None
    )
    self.patience = cfg.early_stopping_patience
    self.best = (
      Watch(cfg.keep_best_checkpoint, flag="--keep_best_checkpoint")
      if cfg.keep_best_checkpoint
      else None
    )
    self.ckpt = (
      checkpointing.Checkpointer(os.path.join(workdir, BEST_DIR), keep=1) if self.best else None
    )

  @property
  def active(self) -> bool:
    return self.stopping is not None or self.best is not None

  @property
  def should_stop(self) -> bool:
    return self.stopping is not None and self.stopping.since_best >= self.patience

  def replay(self, rows: list[Mapping[str, Any]]) -> None:
    """Takes the validation rows a resumed run wrote up to its checkpoint, in order."""
    for row in rows:
      self._update(int(row["step"]), row)

  def drop_after(self, step: int) -> None:
    """Deletes a best checkpoint saved after `step` (the run resumes before it)."""
    if self.ckpt is not None:
      for s in self.ckpt.all_steps():
        if s > step:
          self.ckpt.manager.delete(s)

  def _update(self, step: int, metrics: Mapping[str, Any]) -> bool:
    if self.stopping is not None:
      self.stopping.update(step, metrics)
    return self.best is not None and self.best.update(step, metrics)

  def __call__(self, step: int, metrics: Mapping[str, Any], state: Any) -> bool:
    """Takes the validation eval at `step` (flat numbers); saves `state` when it is the best
    so far; True when early stopping says stop."""
    if self._update(step, metrics):
      self.ckpt.save(step, state)
    return self.should_stop

  def summary(self) -> dict[str, Any]:
    """What selection decided, for the run's final rows."""
    out = {}
    if self.best is not None and self.best.best_step is not None:
      out.update(best_step=self.best.best_step, best_value=self.best.best)
    if self.stopping is not None and self.stopping.best_step is not None:
      out.update(early_stopping_best_step=self.stopping.best_step)
    return out

  def wait(self) -> None:
    if self.ckpt is not None:
      self.ckpt.wait()

  def close(self) -> None:
    if self.ckpt is not None:
      self.ckpt.close()


def checkpoint_to_load(workdir: str, choice: str) -> tuple[str, int]:
  """(checkpoint directory, step) a trained run is loaded from under --checkpoint=`choice`:
  `best` (WORKDIR/checkpoints_best when it holds one, else the latest), `latest`, or a step
  (of either directory)."""
  latest_dir = os.path.join(workdir, "checkpoints")
  best_dir = os.path.join(workdir, BEST_DIR)
  steps = {d: _steps(d) for d in (latest_dir, best_dir)}
  choice = str(choice)
  if choice == "best" and steps[best_dir]:
    return best_dir, max(steps[best_dir])
  if choice in ("best", "latest"):
    if not steps[latest_dir]:
      raise UsageError(f"{latest_dir} holds no checkpoint: train the run first")
    return latest_dir, max(steps[latest_dir])
  step = int(choice)
  for d in (latest_dir, best_dir):
    if step in steps[d]:
      return d, step
  held = sorted(set(steps[latest_dir]) | set(steps[best_dir]))
  raise UsageError(
    f"--checkpoint={choice}: {workdir} holds no checkpoint at that step; it holds steps "
    f"{', '.join(map(str, held)) or 'none'}"
  )


def _steps(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return [int(s) for s in os.listdir(directory) if s.isdigit()]
