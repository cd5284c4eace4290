"""The train step's FLOPs, the devices' peaks and the TFLOP/s and MFU a run logs."""

import io
import json
import os
import types

import numpy as np
import pytest

from dlu.runtime import parallel, peaks
from dlu.runtime.periodic import ReportProgress
from dlu.train import experiment, loop
from tests.test_feeds import _cfg


def _step_flops(tmp_path, **overrides):
  exp = experiment.build(_cfg(**overrides), str(tmp_path))
  abstract = parallel.make_init(exp.family, exp.mesh)[1]
  feed = loop.make_feed(exp)
  try:
    return feed.flops_per_step(abstract)
  finally:
    feed.close()


def test_step_flops_are_positive_and_scale_with_the_batch(tmp_path):
  small = _step_flops(tmp_path / "a", batch_size=32)
  large = _step_flops(tmp_path / "b", batch_size=64)
  host = _step_flops(tmp_path / "c", batch_size=64, input_pipeline="host")
  assert small > 0
  # Forward and backward grow with the batch; Adam's update (a few FLOPs per weight) does not.
  assert 1.8 < large / small < 2.0
  assert host == large  # the same program, fed by the host


def test_the_table_knows_accelerators_by_device_kind():
  assert peaks.known_peak("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4e12)
  assert peaks.known_peak("NVIDIA H100 PCIe", "float32") == pytest.approx(378e12)
  assert peaks.known_peak("NVIDIA A100-SXM4-40GB", "bfloat16") == pytest.approx(312e12)
  assert peaks.known_peak("TPU v5 lite", "bfloat16") == pytest.approx(197e12)
  assert peaks.known_peak("Tesla T4", "bfloat16") is None  # no bf16 units
  assert peaks.known_peak("NVIDIA L40S") is None  # not L4
  gpu = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200", process_index=0)
  peak, how = peaks.run_peak([gpu, gpu], "bfloat16")
  assert peak == pytest.approx(2 * 989.4e12) and "NVIDIA H200" in how
  odd = types.SimpleNamespace(platform="gpu", device_kind="Some Future GPU", process_index=0)
  assert peaks.run_peak([odd])[0] is None


def test_the_cpu_probe_runs_once_per_machine(tmp_path, monkeypatch):
  first = peaks.cpu_peak(str(tmp_path))
  assert first > 0
  with open(tmp_path / peaks.CACHE_FILE) as f:
    assert [v["float32"] for v in json.load(f).values()] == [first]

  def no_probe(*args, **kwargs):
    raise AssertionError("probed again")

  monkeypatch.setattr(peaks, "probe_cpu_flops", no_probe)
  assert peaks.cpu_peak(str(tmp_path)) == first  # read from the JSON


def test_progress_shows_tflops_and_mfu_only_when_known():
  rows = []
  writer = types.SimpleNamespace(write_scalars=lambda step, split, m: rows.append(m))
  out = io.StringIO()
  report = ReportProgress(
    10, every_steps=5, batch_size=8, writer=writer, stream=out, flops_per_step=2e12, peak_flops=8e12
  )
  report.rate = 2.0
  assert report.throughput() == {"steps_per_s": 2.0, "tflops": 4.0, "mfu": 0.5}
  assert "4 TFLOP/s | MFU 50%" in report.line(5, {})
  report.peak_flops = None
  assert "mfu" not in report.throughput() and "MFU" not in report.line(5, {})


@pytest.mark.slow
def test_a_run_logs_tflops_and_mfu(tmp_path, capsys):
  cfg = _cfg(num_steps=8, log_every=4, eval_every=8, checkpoint_every=8)
  assert np.isfinite(loop.train_and_evaluate(cfg, str(tmp_path))["mse"])
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    train = [r for r in map(json.loads, f) if r["split"] == "train"]
  assert [r["step"] for r in train] == [4, 8]
  assert all(r["tflops"] > 0 and 0 < r["mfu"] < 1 for r in train)
  out = capsys.readouterr().out
  assert "MFU against CPU float32 matmul probe" in out and "TFLOP/s | MFU" in out
