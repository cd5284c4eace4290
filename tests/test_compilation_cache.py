"""The persistent compilation cache every entry point turns on (`--compilation_cache_dir`)."""

import os
import subprocess
import sys

import pytest

from dlu.errors import UsageError
from dlu.runtime import compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "configs", "ae_digits.flags")


def _train(workdir, *args):
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.train", f"--flagfile={DIGITS}", f"--workdir={workdir}"]
    + ["--num_steps=20", "--log_every=10", "--eval_every=20", "--checkpoint_every=20", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_default_is_under_the_users_cache_directory(monkeypatch, tmp_path):
  monkeypatch.delenv("DLU_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache.default_dir() == str(tmp_path / "dlu" / "jax_compilation_cache")
  monkeypatch.setenv("DLU_CACHE_DIR", str(tmp_path / "mine"))
  assert compilation_cache.default_dir() == str(tmp_path / "mine" / "jax_compilation_cache")
  assert compilation_cache.enable("none") is None


def test_a_directory_that_cannot_be_made_is_a_usage_error(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(UsageError, match="--compilation_cache_dir=.*cannot be created"):
    compilation_cache.enable(str(tmp_path / "file" / "cache"))


@pytest.mark.slow
def test_a_run_fills_the_cache_and_does_not_record_it(tmp_path):
  cache = tmp_path / "cache"
  _train(tmp_path / "a", f"--compilation_cache_dir={cache}")
  entries = set(os.listdir(cache))
  assert any("train_step" in e or "multi_step" in e for e in entries), entries
  _train(tmp_path / "b", f"--compilation_cache_dir={cache}")  # same programs: nothing new
  assert set(os.listdir(cache)) == entries
  assert "compilation_cache_dir" not in (tmp_path / "a" / "flags.txt").read_text()
  _train(tmp_path / "c", "--compilation_cache_dir=none")
  assert set(os.listdir(cache)) == entries
