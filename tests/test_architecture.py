"""The house's shape: import contracts (setup.cfg) hold, and the code passes ruff."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name: str) -> str:
  path = os.path.join(os.path.dirname(sys.executable), name)
  return path if os.path.exists(path) else (shutil.which(name) or name)


def test_import_contracts_hold():
  """No import cycles (function-level imports included), no upward imports between layers,
  models import no training code."""
  out = subprocess.run(
    [_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
  assert "BROKEN" not in out.stdout and "0 broken" in out.stdout


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args):
  out = subprocess.run(
    [_tool("ruff"), *args, "dlu", "experiments", "scripts", "tests"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def _flags_defined_by(module: str) -> set[str]:
  code = f"import {module}; from dlu import config; print(' '.join(vars(config.make_config())))"
  out = subprocess.run(
    [sys.executable, "-c", code],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return set(out.stdout.split())


@pytest.mark.slow
def test_a_loaded_run_knows_every_flag_training_records():
  """flags.txt holds every flag of the training process; dlu.train.experiment.restore_trained (used by
  evaluate, augment and notebooks) must be able to read it back."""
  trained = _flags_defined_by("dlu.train.loop")
  assert {"model", "latent_dim", "evaluators", "cluster_on", "eval_samples"} <= trained
  assert trained == _flags_defined_by("dlu.train.experiment")


def test_the_top_of_dlu_is_packages_by_layer():
  """A path says which layer a file is in: dlu/ holds the public API, the errors and the file
  helpers (the base every layer uses), and otherwise only packages, each a layer of the
  contract in setup.cfg."""
  top = sorted(p for p in os.listdir(os.path.join(ROOT, "dlu")) if p.endswith(".py"))
  assert top == ["__init__.py", "errors.py", "files.py"]
  packages = {
    p
    for p in os.listdir(os.path.join(ROOT, "dlu"))
    if os.path.isfile(os.path.join(ROOT, "dlu", p, "__init__.py"))
  }
  with open(os.path.join(ROOT, "setup.cfg")) as f:
    contract = f.read().split("[importlinter:contract:layers]")[1].split("\n\n")[0]
  layers = set(contract.split("layers =")[1].split())
  assert packages | {"errors", "files"} == layers


def test_the_public_api_resolves_and_import_dlu_is_light():
  code = (
    "import sys, dlu; assert 'jax' not in sys.modules, 'import dlu imported JAX'; "
    "print(' '.join(n for n in dlu.__all__ if getattr(dlu, n, None) is None))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == ""
