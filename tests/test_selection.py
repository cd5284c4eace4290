"""Model selection on the validation split: early stopping, the best checkpoint, --checkpoint."""

import json
import os

import pytest

from dlu import config
from dlu.errors import UsageError
from dlu.train import experiment, loop, selection


def _cfg(**overrides):
  defaults = dict(
    early_stopping_metric="mse", early_stopping_patience=3, keep_best_checkpoint="mse"
  )
  return config.make_config(**{**defaults, **overrides})


# A scripted sequence of validation evals, one every 10 steps: 0.5 at step 40, then three
# evals without an improvement of more than 0.01 (0.495 at 50 is better, but not by enough).
SCRIPT = [1.0, 0.8, 0.9, 0.5, 0.495, 0.6, 0.7, 0.65, 0.4]


def _feed(sel, values, state=None):
  """Steps at which `sel` said stop, and the steps whose state it saved as the best."""
  saved, stops = [], []
  sel.ckpt = type("Recorder", (), {"save": lambda self, step, s: saved.append(step)})()
  for i, value in enumerate(values):
    step = 10 * (i + 1)
    if sel(step, {"mse": value, "psnr": -value}, state):
      stops.append(step)
      break
  return stops, saved


def test_early_stopping_stops_at_the_right_eval_and_keeps_the_best(tmp_path):
  sel = selection.ModelSelection(_cfg(early_stopping_min_delta=0.01), str(tmp_path))
  stops, saved = _feed(sel, SCRIPT)
  # The best checkpoint follows every improvement; early stopping only those above min_delta.
  assert stops == [70] and saved == [10, 20, 40, 50]
  assert sel.summary() == {"best_step": 50, "best_value": 0.495, "early_stopping_best_step": 40}
  # Without min_delta, 0.495 improves: stopping comes one eval later.
  sel = selection.ModelSelection(_cfg(), str(tmp_path / "b"))
  stops, saved = _feed(sel, SCRIPT)
  assert stops == [80] and saved == [10, 20, 40, 50]


def test_higher_is_better_metrics_and_non_finite_values(tmp_path):
  watch = selection.Watch("probes/linear_probe_acc")
  assert watch.higher and not selection.Watch("mse").higher
  for step, value in enumerate([0.2, float("nan"), 0.5, 0.4]):
    watch.update(step, {"probes/linear_probe_acc": value})
  assert (watch.best, watch.best_step, watch.since_best) == (0.5, 2, 1)
  first = selection.Watch("mse")
  assert not first.update(0, {"mse": float("nan")}) and first.best is None
  with pytest.raises(UsageError, match="--early_stopping_metric=mse: .* they have psnr"):
    first.update(1, {"psnr": 3.0})


def test_a_resumed_selection_decides_as_the_uninterrupted_one(tmp_path):
  """Replaying the validation rows up to the restored step rebuilds both watches."""
  full = selection.ModelSelection(_cfg(early_stopping_min_delta=0.01), str(tmp_path / "a"))
  assert _feed(full, SCRIPT)[0] == [70]
  resumed = selection.ModelSelection(_cfg(early_stopping_min_delta=0.01), str(tmp_path / "b"))
  rows = [{"step": 10 * (i + 1), "split": "valid", "mse": v} for i, v in enumerate(SCRIPT[:5])]
  resumed.replay(rows)
  stops, saved = _feed(resumed, [])  # nothing new yet: the state is the replayed one
  assert resumed.stopping.best_step == 40 and resumed.stopping.since_best == 1 and not saved
  assert resumed.best.best_step == 50
  for step, value in zip((60, 70), SCRIPT[5:7], strict=True):
    stop = resumed(step, {"mse": value}, None)
  assert stop and resumed.summary() == full.summary()


@pytest.mark.slow
def test_early_stopped_run_keeps_the_best_checkpoint_and_loads_it(tmp_path):
  """A tiny run whose validation mse can never improve by --early_stopping_min_delta: it stops
  once the patience runs out, keeps the best state (by validation mse), scores the test split
  once, and --checkpoint chooses what a loaded run holds."""
  workdir = str(tmp_path / "run")
  cfg = _cfg(
    model="ae_seed",
    hidden_units=8,
    dataset="digits",
    batch_size=64,
    num_steps=40,
    log_every=2,
    eval_every=2,
    checkpoint_every=2,
    evaluators=["metrics"],
    early_stopping_patience=2,
    early_stopping_min_delta=10.0,
  )
  final = loop.train_and_evaluate(cfg, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  valid = [r for r in rows if r["split"] == "valid"]
  assert [r["step"] for r in valid] == [2, 4, 6]
  (test,) = [r for r in rows if r["split"] == "test"]
  (gap,) = [r for r in rows if r["split"] == "generalisation"]
  best = min(valid, key=lambda r: r["mse"])["step"]
  assert test["step"] == 6 and final["mse"] == test["mse"]
  assert gap["best_step"] == best and gap["early_stopping_best_step"] == 2
  assert _steps(workdir, selection.BEST_DIR) == [best] and _steps(workdir, "checkpoints") == [
    2,
    4,
    6,
  ]
  loaded = {
    choice: int(
      experiment.restore_trained(workdir, **({"checkpoint": choice} if choice else {}))[1].step
    )
    for choice in (None, "latest", "4")
  }
  assert loaded == {None: best, "latest": 6, "4": 4}
  # Rerun, the stopped run stays stopped: no training step, the same checkpoints.
  loop.train_and_evaluate(cfg, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert not [r for r in rows if r["split"] == "train" and r["step"] > 6]
  assert _steps(workdir, "checkpoints") == [2, 4, 6]


def test_checkpoint_choice(tmp_path):
  for folder, steps in (("checkpoints", (4, 6)), (selection.BEST_DIR, (2,))):
    for step in steps:
      os.makedirs(tmp_path / folder / str(step))
  os.makedirs(tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1")  # an unfinished save
  latest, best = str(tmp_path / "checkpoints"), str(tmp_path / selection.BEST_DIR)
  assert selection.checkpoint_to_load(str(tmp_path), "best") == (best, 2)
  assert selection.checkpoint_to_load(str(tmp_path), "latest") == (latest, 6)
  assert selection.checkpoint_to_load(str(tmp_path), "4") == (latest, 4)
  assert selection.checkpoint_to_load(str(tmp_path), "2") == (best, 2)
  with pytest.raises(UsageError, match="holds steps 2, 4, 6"):
    selection.checkpoint_to_load(str(tmp_path), "3")
  os.rename(best, best + "_moved")  # no best checkpoint: best is the latest
  assert selection.checkpoint_to_load(str(tmp_path), "best") == (latest, 6)


def _steps(workdir, folder):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, folder)) if s.isdigit())


def test_selection_needs_a_validation_split(tmp_path):
  cfg = _cfg(dataset="digits", validation_fraction=0.0)
  with pytest.raises(UsageError, match="--early_stopping_metric selects on the validation"):
    experiment.build(cfg, str(tmp_path))
