"""One run per workdir: the lock refuses a second holder, names the first, and survives crashes."""

import json
import os
import signal
import socket

import pytest

from dlu.errors import UsageError
from dlu.runtime import preemption
from dlu.train import loop
from dlu.train.workspace import LOCK_FILE, WorkdirLock


def test_a_second_holder_is_refused_with_the_first_named(tmp_path):
  with WorkdirLock(str(tmp_path)):
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(UsageError) as e:
      WorkdirLock(str(tmp_path)).acquire()
    message = str(e.value)
    assert "is in use by another run" in message and "\n" not in message
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert holder["started"] in message
  assert not (tmp_path / LOCK_FILE).exists()  # Released: the workdir is as it was.
  with WorkdirLock(str(tmp_path)) as again:
    assert again.stale_note() is None


def test_the_lock_of_a_crashed_run_is_stale_and_taken_over(tmp_path):
  # A run killed with -9 leaves its file, but no process holds the flock any more.
  dead = {"host": socket.gethostname(), "pid": 2**22 + 1, "started": "2026-01-01T00:00:00"}
  (tmp_path / LOCK_FILE).write_text(json.dumps(dead))
  with WorkdirLock(str(tmp_path)) as lock:
    assert "stale lock" in lock.stale_note() and f"pid {dead['pid']}" in lock.stale_note()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_processes_other_than_the_lead_take_no_lock(tmp_path):
  with WorkdirLock(str(tmp_path)):
    with WorkdirLock(str(tmp_path), enabled=False):
      pass


def test_sigterm_before_training_exits_with_nothing_written(tmp_path, monkeypatch, capsys):
  from dlu import config as flags
  from dlu.train import experiment

  build = experiment.build

  def build_then_sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # As a scheduler would, while the data loads.
    return build(*args, **kwargs)

  monkeypatch.setattr(experiment, "build", build_then_sigterm)
  workdir = tmp_path / "run"
  result = loop.train_and_evaluate(flags.make_config(dataset="digits"), str(workdir))
  assert result == {} and not workdir.exists()
  assert "SIGTERM received before training started" in capsys.readouterr().out


def test_a_second_sigterm_ends_the_process_at_once():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionNotice() as notice:
    with pytest.raises(preemption.Preempted):
      os.kill(os.getpid(), signal.SIGTERM)
    notice.training()
    os.kill(os.getpid(), signal.SIGTERM)
    assert notice.received
    # The next SIGTERM is no longer caught: it ends the process, even one stuck in a step.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  assert signal.getsignal(signal.SIGTERM) == previous


def test_sigterm_during_an_evaluation_stops_at_once_keeping_the_checkpoints(
  tmp_path, monkeypatch, capsys
):
  from dlu import config as flags
  from dlu import evaluators
  from dlu.runtime.checkpointing import read_checkpoint

  evaluate = evaluators.Evaluation.__call__

  def sigterm_in_the_first_eval(self, step, *args, **kwargs):
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)  # no step is running: nothing to wait for
      raise AssertionError("the evaluation went on after SIGTERM")
    return evaluate(self, step, *args, **kwargs)

  monkeypatch.setattr(evaluators.Evaluation, "__call__", sigterm_in_the_first_eval)
  cfg = flags.make_config(
    dataset="digits",
    model="ae_seed",
    hidden_units=8,
    batch_size=64,
    num_steps=8,
    log_every=4,
    eval_every=4,
    checkpoint_every=4,
    evaluators=["metrics"],
  )
  workdir, before = str(tmp_path / "run"), signal.getsignal(signal.SIGTERM)
  assert loop.train_and_evaluate(cfg, workdir) == {}
  out = capsys.readouterr().out
  assert "SIGTERM received during the evaluation at step 4: stopped at once" in out
  assert int(read_checkpoint(workdir)["step"]) == 4  # saved before the evaluation, kept
  assert signal.getsignal(signal.SIGTERM) == before  # restored on the way out
  assert not os.path.exists(os.path.join(workdir, LOCK_FILE))
