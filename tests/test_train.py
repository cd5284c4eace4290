"""End to end: the runner from a flagfile, its workdir, resume, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dlu import config
from dlu.errors import UsageError
from dlu.runtime.checkpointing import read_checkpoint
from dlu.train import experiment, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "configs", "ae_digits.flags")


def _train(*args, check=True):
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.train", *args],
    cwd=ROOT,
    env={**os.environ},
    capture_output=True,
    text=True,
    timeout=300,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_flagfile_run_writes_its_workdir_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  common = [
    f"--flagfile={DIGITS}",
    f"--workdir={workdir}",
    "--log_every=10",
    "--eval_every=30",
    "--checkpoint_every=20",
  ]
  out = _train(*common, "--num_steps=60").stdout
  assert "step 60/60" in out and "valid at step 60" in out and "tensorboard --logdir" in out
  assert "test at step 60" in out and "valid at step 30" in out and "test at step 30" not in out

  assert sorted(
    int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()
  ) == [20, 40, 60]
  rows = _rows(workdir)
  train = [r for r in rows if r["split"] == "train"]
  evals = [r for r in rows if r["split"] == "valid"]
  assert [r["step"] for r in train] == [10, 20, 30, 40, 50, 60]
  assert {"loss", "grad_norm", "param_norm", "update_norm"} <= set(train[-1])
  assert [r["step"] for r in evals] == [30, 60]
  assert {"mse", "psnr"} <= set(evals[-1]) and evals[-1]["mse"] < evals[0]["mse"]
  # The test split is scored once, at the end; the generalisation row sets the three splits'
  # numbers side by side (the training split's scored then too).
  (test,) = [r for r in rows if r["split"] == "test"]
  (gap,) = [r for r in rows if r["split"] == "generalisation"]
  assert test["step"] == gap["step"] == 60 and test["mse"] != evals[-1]["mse"]
  assert gap["valid/mse"] == evals[-1]["mse"] and gap["test/mse"] == test["mse"]
  assert 0 < gap["train/mse"] != gap["valid/mse"] and {"train/psnr", "test/psnr"} <= set(gap)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert os.path.exists(os.path.join(workdir, "images", "reconstructions_0000060.png"))
  emb = np.load(os.path.join(workdir, "embeddings_test.npz"))
  assert emb["embeddings"].shape == (297, 32) and emb["labels"].shape == (297,)
  with open(os.path.join(workdir, "flags.txt")) as f:
    assert "--model=ae_seed\n" in f.read()

  # The same command with more steps resumes at 60 and goes on to 100.
  out = _train(*common, "--num_steps=100").stdout
  assert "Resuming ae_seed on digits from step 60" in out and "step 100/100" in out
  train = [r["step"] for r in _rows(workdir) if r["split"] == "train"]
  assert train == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]

  # Rerunning a finished run changes nothing and says where its results are.
  rows = _rows(workdir)
  out = _train(*common, "--num_steps=100").stdout
  assert "already trained to step 100" in out and "Results in" in out
  assert _rows(workdir) == rows


def _params(workdir, step):
  return read_checkpoint(workdir, step)["params"]


@pytest.mark.slow
def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
  cfg = config.make_config(
    model="ae_seed",
    hidden_units=16,
    dataset="digits",
    batch_size=64,
    num_steps=40,
    log_every=10,
    eval_every=40,
    checkpoint_every=10,
    num_images=8,
    noise="gaussian",
    noise_level=0.1,
  )
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  loop.train_and_evaluate(cfg, straight)
  loop.train_and_evaluate(cfg.replace(num_steps=20), split)
  loop.train_and_evaluate(cfg, split)
  a, b = _params(straight, 40), _params(split, 40)
  for key in ("encoder", "decoder"):
    np.testing.assert_array_equal(a[key]["dense_0"]["kernel"], b[key]["dense_0"]["kernel"])


def test_full_batch_gradient_descent(tmp_path):
  cfg = config.make_config(
    model="ae_seed",
    hidden_units=8,
    dataset="digits",
    optimizer="gd",
    learning_rate=0.5,
    num_steps=3,
    log_every=1,
    eval_every=3,
    checkpoint_every=3,
    num_images=8,
  )
  exp = experiment.build(cfg, str(tmp_path))
  # 1500 train images less 150 held out for validation, in whole multiples of 8 devices.
  assert exp.sampler.global_batch_size == 1344
  metrics = loop.train_and_evaluate(cfg, str(tmp_path / "gd"))
  assert np.isfinite(metrics["mse"])


@pytest.mark.slow
def test_a_profiled_run_writes_a_trace_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  common = (f"--flagfile={DIGITS}", f"--workdir={workdir}", "--log_every=5", "--eval_every=10")
  out = _train(*common, "--num_steps=10", "--checkpoint_every=10", "--profile_steps=4:3").stdout
  assert "Profiled steps 5-7" in out
  traces = [f for _, _, names in os.walk(workdir / "plugins" / "profile") for f in names]
  assert any(f.endswith((".xplane.pb", ".trace.json.gz")) for f in traces), traces
  out = _train(*common, "--num_steps=20", "--checkpoint_every=10", "--profile_steps=4:3").stdout
  assert "Resuming ae_seed on digits from step 10" in out


def test_profile_steps_is_n_or_start_colon_n():
  cfg = config.make_config(log_every=50, num_steps=200)
  assert config.profile_window(cfg) == (0, 0)
  assert config.profile_window(cfg.replace(profile_steps="5")) == (50, 5)
  assert config.profile_window(cfg.replace(profile_steps="120:10")) == (120, 10)
  for bad in ("x", "-1", "3:-2", "a:2"):
    with pytest.raises(UsageError, match="--profile_steps must be N or START:N"):
      config.profile_window(cfg.replace(profile_steps=bad))
