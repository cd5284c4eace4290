"""scripts/device_check.sh in its quick mode writes a report with every section."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_device_check_writes_every_section(tmp_path):
  report = tmp_path / "report.md"
  proc = subprocess.run(
    ["bash", "scripts/device_check.sh", str(report), "--quick"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  text = report.read_text()
  for section in (
    "## Device and versions",
    "## Throughput, float32",
    "## One short run per family, float32",
    "## 1-vs-N-device agreement",
  ):
    assert section in text
  assert "jax 0.10" in text and "devices: 1 x cpu" in text
  assert "| seed MLP AE" in text  # the benchmark's row
  row = next(line for line in text.splitlines() if line.startswith("| autoencoder |"))
  assert "| ok |" in row and row.split("|")[8].strip().endswith("%")  # its MFU
  assert "(agree;" in text and "Skipped" not in text


def test_device_check_refuses_an_unknown_family(tmp_path):
  proc = subprocess.run(
    ["bash", "scripts/device_check.sh", str(tmp_path / "r.md"), "--families=nope"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 2 and "--families" in proc.stderr
  assert not (tmp_path / "r.md").exists()
