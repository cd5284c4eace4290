"""Two processes on localhost train like one process with the same number of devices (also
on a table, streamed by a worker process in each)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dlu.errors import UsageError
from dlu.runtime import distributed
from dlu.runtime.checkpointing import read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "configs", "ae_digits.flags")
ARGS = [
  "--num_steps=30",
  "--checkpoint_every=30",
  "--eval_every=30",
  "--log_every=10",
  "--optimizer=sgd",
  "--learning_rate=0.5",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _digits_table(path) -> list[str]:
  """The 8x8 digits as a 64-column CSV with a label column: the same run on a table."""
  from sklearn import datasets

  d = datasets.load_digits()
  header = ",".join([f"p{i}" for i in range(64)] + ["digit"])
  np.savetxt(path, np.column_stack([d.data, d.target]), delimiter=",", header=header, comments="")
  return [f"--dataset=csv:{path}", "--label_column=digit", "--feature_scaling=minmax"]


@pytest.mark.slow
@pytest.mark.parametrize("data", ["images", "table"])
def test_two_processes_match_one_process(tmp_path, data):
  args = ARGS + (_digits_table(tmp_path / "digits.csv") if data == "table" else [])
  one = str(tmp_path / "one")
  single = subprocess.run(
    [sys.executable, "-m", "experiments.train", f"--flagfile={DIGITS}", f"--workdir={one}", *args],
    cwd=ROOT,
    env=_env(4),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert single.returncode == 0, single.stderr

  two = str(tmp_path / "two")
  port = _free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.train",
        f"--flagfile={DIGITS}",
        f"--workdir={two}",
        *args,
        *(["--input_pipeline=stream"] if data == "table" else []),
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=ROOT,
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:  # Never leave a process behind, pass or fail.
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err
  assert "(4 cpu device(s), 2 processes" in outs[0][0]
  assert "Training" not in outs[1][0]  # Only process 0 speaks and writes logs.

  a, b = read_checkpoint(one, 30)["params"], read_checkpoint(two, 30)["params"]
  import jax

  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-5)
  with open(os.path.join(two, "metrics.jsonl")) as f:
    steps = [line for line in f if '"split": "train"' in line]
  assert len(steps) == 3  # one writer, not two
  if data == "table":  # the scaling fitted once, on the same training rows
    stored = [open(os.path.join(w, "preprocessing.json")).read() for w in (one, two)]
    assert stored[0] == stored[1] and '"minmax"' in stored[0]


def test_initialize_needs_all_three_flags_or_none():
  assert not distributed.initialize(
    distributed="auto", coordinator_address=None, num_processes=None, process_id=None
  )
  with pytest.raises(UsageError, match="go together"):
    distributed.initialize(
      distributed="auto", coordinator_address="127.0.0.1:1234", num_processes=None, process_id=None
    )
  with pytest.raises(UsageError, match="--process_id must be in"):
    distributed.initialize(
      distributed="on", coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2
    )


@pytest.mark.slow
def test_a_missing_coordinator_gives_up_after_the_timeout_with_one_line(tmp_path):
  workdir = tmp_path / "w"
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.train",
      f"--flagfile={DIGITS}",
      f"--workdir={workdir}",
      f"--coordinator_address=127.0.0.1:{_free_port()}",
      "--num_processes=2",
      "--process_id=1",
      "--distributed_timeout=2",
    ],
    cwd=ROOT,
    env=_env(1),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 1
  assert "waits up to 2 s for 127.0.0.1:" in out.stdout
  assert out.stderr.startswith("error: multi-process start-up: process 1 of 2 did not reach")
  assert out.stderr.count("\n") == 1 and not workdir.exists()
