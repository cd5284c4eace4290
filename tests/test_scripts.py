"""The sweep driver, the clustering protocol and the cluster launch scripts."""

import csv
import importlib.util
import os
import re
import subprocess
import sys

import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "scripts", "sweep.py")
DIGITS = os.path.join(ROOT, "experiments", "configs", "ae_digits.flags")


def _sweep(*args):
  return subprocess.run(
    [sys.executable, SWEEP, f"--flagfile={DIGITS}", *args],
    cwd=ROOT,
    env={**os.environ},
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.slow
def test_sweep_runs_the_grid_collects_results_and_skips_finished_runs(tmp_path):
  root = str(tmp_path / "sweep")
  args = [
    "--grid",
    "learning_rate=1e-3,3e-3",
    "--grid",
    "hidden_units=8,16",
    f"--workdir_root={root}",
    "--parallel=2",
    "--",
    "--num_steps=20",
    "--eval_every=20",
    "--log_every=10",
    "--checkpoint_every=20",
  ]
  out = _sweep(*args)
  assert out.returncode == 0, out.stderr
  assert "4 runs, 0 finished, 4 to run" in out.stdout
  with open(os.path.join(root, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4
  assert {(r["learning_rate"], r["hidden_units"]) for r in rows} == {
    ("1e-3", "8"),
    ("1e-3", "16"),
    ("3e-3", "8"),
    ("3e-3", "16"),
  }
  assert all(r["finished"] == "True" and r["step"] == "20" for r in rows)
  assert all(float(r["valid/mse"]) > 0 and float(r["test/mse"]) > 0 for r in rows)
  assert os.path.getsize(os.path.join(root, "valid_mse_vs_learning_rate.png")) > 1000
  best = min(rows, key=lambda r: float(r["valid/mse"]))
  assert f"valid mse {float(best['valid/mse']):.6g}, test mse {float(best['test/mse']):.6g}" in (
    out.stdout
  )
  again = _sweep(*args)
  assert again.returncode == 0 and "4 runs, 4 finished, 0 to run" in again.stdout


def test_sweep_chooses_on_validation_and_ignores_test_metrics():
  spec = importlib.util.spec_from_file_location("sweep", SWEEP)
  sweep = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(sweep)
  grid = {"learning_rate": ["1e-3", "3e-3"], "seed": ["0", "1"]}
  # 3e-3 is better on test, 1e-3 on validation (seeds averaged: 0.15 against 0.2).
  values = {("1e-3", "0"): (0.1, 0.9), ("1e-3", "1"): (0.2, 0.9), ("3e-3", "0"): (0.2, 0.1)}
  values[("3e-3", "1")] = (0.2, 0.1)
  table = [
    {"run": f"{lr},{s}", "learning_rate": lr, "seed": s, "valid/mse": v, "test/mse": t}
    for (lr, s), (v, t) in values.items()
  ]
  chosen = sweep.choose(table, grid, "mse")
  assert chosen["flags"] == {"learning_rate": "1e-3"}
  assert chosen["valid"] == pytest.approx(0.15) and chosen["test"] == pytest.approx(0.9)
  # Higher is better for accuracies; test columns alone choose nothing.
  for r in table:
    r["valid/acc"] = r.pop("valid/mse")
  assert sweep.choose(table, grid, "acc")["flags"] == {"learning_rate": "3e-3"}
  assert sweep.choose(table, grid, "mse") is None


def test_sweep_dry_run_prints_one_command_per_run(tmp_path):
  out = _sweep(
    "--grid", "seed=0,1,2", "--grid", "latent_dim=8,32", f"--workdir_root={tmp_path}", "--dry_run"
  )
  lines = out.stdout.strip().splitlines()
  assert out.returncode == 0 and len(lines) == 6
  assert all("-m experiments.train" in line and "--workdir=" in line for line in lines)
  assert not os.listdir(tmp_path)


def test_sweep_rejects_a_bad_grid(tmp_path):
  out = _sweep("--grid", "learning_rate", f"--workdir_root={tmp_path}")
  assert out.returncode != 0 and "expected NAME=V1,V2" in out.stderr


@pytest.mark.parametrize("script", ["launch_tpu_vm.sh", "launch_slurm.sbatch"])
def test_launch_scripts_parse_and_use_real_flags(script):
  path = os.path.join(ROOT, "scripts", script)
  assert subprocess.run(["bash", "-n", path]).returncode == 0
  import experiments.prepare_data  # noqa: F401  (the scripts' comments prepare data first)
  import experiments.train  # noqa: F401  (defines every flag the trainer accepts)

  text = open(path).read()
  used = set(re.findall(r"--([a-z_]+)=", text)) - {
    "zone",
    "worker",
    "command",
    "nodes",
    "gpus",
    "job",
    "ntasks",
    "signal",
    "kill",
  }
  assert {"flagfile", "workdir", "distributed"} <= used
  for name in used - {"flagfile"}:
    assert name in flags.FLAGS, (
      f"{script} passes --{name}, which neither train nor prepare_data defines"
    )
  assert "experiments.train" in text


@pytest.mark.slow
def test_cluster_protocol_on_digits_averages_seeds_and_keeps_the_baselines(tmp_path):
  import json

  import numpy as np

  root = str(tmp_path / "protocol")
  cmd = [
    sys.executable,
    os.path.join(ROOT, "scripts", "cluster_protocol.py"),
    f"--root={root}",
    "--seeds=0,1",
    "--methods=ae,cc",
    f"--ae_flagfile={DIGITS}",
    "--cc_flagfile=experiments/configs/cc_digits.flags",
    "--train_args=--num_steps=150 --evaluators=metrics",
    "--eval_args=--kmeans_inits=2 --embedding_plot=pca --purity_clusters=30 --knn_probe=10",
  ]
  # One CPU device per run: these small programs compile and run faster than on eight.
  xla_flags = " ".join(
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  )
  out = subprocess.run(
    cmd,
    cwd=ROOT,
    env={**os.environ, "XLA_FLAGS": xla_flags},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  result = json.load(open(os.path.join(root, "protocol.json")))
  assert result["seeds"] == [0, 1] and result["num_clustered"] == 1797  # train and test
  for method in ("ae", "cc"):
    acc = result["methods"][method]["acc"]
    assert len(acc["runs"]) == 2 and all(0.3 < a <= 1 for a in acc["runs"])  # chance is 0.1
    assert acc["mean"] == pytest.approx(np.mean(acc["runs"]))
    assert acc["std"] == pytest.approx(np.std(acc["runs"]))
  assert {"pixels", "pca"} <= set(result["baselines"])
  assert "linear_probe_acc" in result["baselines"]["pixels"]  # the autoencoder's evaluation
  assert re.search(r"^cc\s+simclr_mlp clustering layer\s+0\.\d{4}±0\.\d{4}", out.stdout, re.M)
  cc = result["methods"]["cc"]
  assert cc["clustering"] == "simclr_mlp clustering layer"
  assert 0.5 < cc["linear_probe_acc"] <= 1 and 0.5 < cc["knn_probe_acc"] <= 1
  assert 0.5 < cc["overcluster_purity"] <= 1
  assert 0.3 < cc["baselines"]["kmeans_on_embeddings"]["acc"] <= 1  # its representation
  assert "kmeans_on_embeddings" not in result["baselines"]  # which is not the data's floor
  assert sorted(os.listdir(root)) == [
    "ae_s0",
    "ae_s1",
    "cc_s0",
    "cc_s1",
    "protocol.json",
    "protocol.log",
  ]
