"""Pre-emption: SIGTERM, a scheduler's notice that the process will be stopped, turned into a
clean stop. Before training starts nothing is written and the run ends at once; while a step
runs the loop saves a checkpoint and stops; while no step runs (an evaluation) it stops at once,
keeping the checkpoints saved so far."""

from __future__ import annotations

import contextlib
import signal


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
