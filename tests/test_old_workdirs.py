"""Workdirs written by earlier versions of dlu resume with today's code.

`fixtures/ae_digits_step100` is the workdir of `experiments/configs/ae_digits.flags` stopped at
step 100 (`--num_steps=100`), written by dlu before its modules moved into packages by layer
(flat `dlu/train_loop.py`, `dlu/experiment.py`, ...), on one CPU device.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "ae_digits_step100")
FLAGFILE = os.path.join(ROOT, "experiments", "configs", "ae_digits.flags")


def _train(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as it was made
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.train", f"--flagfile={FLAGFILE}", *args],
    cwd=ROOT,
    env={**env, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  # Throughput is the machine's, not the run's.
  speed = ("steps_per_s", "tflops", "mfu")
  return [{k: v for k, v in r.items() if k not in speed} for r in rows]


def _params(workdir):
  code = (
    "import sys, numpy as np, jax; import dlu; "
    "r = dlu.load_run(sys.argv[1], checkpoint='latest'); "
    "leaves = jax.tree.leaves(jax.device_get(r.state.params)); "
    "np.savez(sys.argv[2], *leaves)"
  )
  out = os.path.join(workdir, "params_for_test.npz")
  subprocess.run(
    [sys.executable, "-c", code, workdir, out],
    cwd=ROOT,
    env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"},
    check=True,
    capture_output=True,
    timeout=300,
  )
  with np.load(out) as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_a_workdir_written_before_the_move_resumes_bit_identically(tmp_path):
  old = str(tmp_path / "old")
  shutil.copytree(FIXTURE, old)
  out = _train(f"--workdir={old}")
  assert "Resuming ae_seed on digits from step 100" in out

  straight = str(tmp_path / "straight")
  _train(f"--workdir={straight}")

  # The steps the old code took are the steps today's code takes ...
  old_rows, new_rows = _rows(old), _rows(straight)

  def trained(rows):
    return [r for r in rows if r["step"] <= 100 and r["split"] in ("train", "valid")]

  assert len(trained(old_rows)) == 3 and trained(old_rows) == trained(new_rows)
  # ... and the resumed run ends where the straight one does: the same rows (the test split's
  # included), the same weights.
  after = [r for r in new_rows if r["step"] > 100]
  assert {r["split"] for r in after} >= {"train", "valid", "test"}
  assert [r for r in old_rows if r["step"] > 100] == after
  for a, b in zip(_params(old), _params(straight), strict=True):
    np.testing.assert_array_equal(a, b)
