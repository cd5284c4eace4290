"""Metric writers behind one interface, composed; periodic actions on their schedule."""

import io
import json
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

from dlu.runtime import metric_writers
from dlu.runtime.periodic import PeriodicCallback, Profile, ReportProgress


def test_default_writer_composes_jsonl_tensorboard_pngs_and_console(tmp_path, capsys):
  writer = metric_writers.create_default_writer(str(tmp_path), lead=True)
  assert [type(w).__name__ for w in writer.writers] == [
    "ImageFileWriter",
    "TensorBoardWriter",
    "JsonlWriter",
    "ConsoleWriter",
  ]
  writer.write_scalars(10, "train", {"loss": np.float32(0.5)})
  writer.write_scalars(20, "valid", {"mse": 0.25, "hist": np.arange(3)})
  paths = writer.write_images(20, {"samples": np.zeros((2, 3, 8, 8, 1))})
  writer.write_hparams({"seed": 0})
  writer.close()
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert rows == [
    {"step": 10, "split": "train", "loss": 0.5},
    {"step": 20, "split": "valid", "mse": 0.25, "hist": [0, 1, 2]},
  ]
  assert paths == [str(tmp_path / "images" / "samples_0000020.png")]
  with Image.open(paths[0]) as png:  # 8x8 images are shown at 32x32, 1 px apart
    assert png.size == (3 * 33 + 1, 2 * 33 + 1)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  assert capsys.readouterr().out == "valid at step 20: hist=[0, 1, 2] mse=0.25\n"


def test_other_processes_write_nothing(tmp_path):
  writer = metric_writers.create_default_writer(str(tmp_path / "w"), lead=False)
  writer.write_scalars(1, "train", {"loss": 1.0})
  assert writer.write_images(1, {"x": np.zeros((1, 1, 4, 4, 1))}) == []
  writer.close()
  assert not os.path.exists(tmp_path / "w")


def test_resume_drops_rows_past_the_checkpoint(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 10, "split": "train"}\n{"step": 20, "split": "train"}\n{"step": 3')
  writer = metric_writers.MultiWriter([metric_writers.JsonlWriter(str(path))])
  metric_writers.drop_rows_after(writer, 10)
  writer.write_scalars(20, "train", {"loss": 2.0})
  writer.close()
  assert [json.loads(line)["step"] for line in open(path)] == [10, 20]


def test_periodic_actions_run_on_their_steps_and_at_the_end():
  seen = []
  action = PeriodicCallback(every_steps=3, callback=lambda step, **kw: seen.append((step, kw)))
  ran = [action(step, final=step == 7, x=step) for step in range(1, 8)]
  assert ran == [False, False, True, False, False, True, True]
  assert seen == [(3, {"x": 3}), (6, {"x": 6}), (7, {"x": 7})]


class _Rows(metric_writers.MetricWriter):
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, split, metrics):
    self.rows.append((step, split, dict(metrics)))


def test_report_progress_prints_a_line_and_writes_a_train_row():
  out, rows = io.StringIO(), _Rows()
  report = ReportProgress(
    100, every_steps=10, batch_size=32, writer=rows, keys=("loss",), stream=out
  )
  report.restart(0)
  assert not report(5, metrics={"loss": 1.0})
  assert report(10, metrics={"loss": np.float32(0.125), "other": 3.0})
  line = out.getvalue()
  assert line.startswith("step 10/100 | loss 0.125 | ") and "steps/s" in line and "ETA" in line
  ((step, split, metrics),) = rows.rows
  assert (step, split) == (10, "train") and metrics["steps_per_s"] == report.rate > 0


def test_profile_traces_the_steps_it_is_asked_for(tmp_path, capsys):
  profile = Profile(str(tmp_path), first_step=2, num_steps=3)
  x = jnp.ones((8, 8))
  for step in range(1, 9):
    x = x @ x / 8
    profile(step, x, final=step == 8)
  profile.close()
  assert profile.started_at == 2 and profile.done
  assert "Profiled steps 3-5" in capsys.readouterr().out
  traces = [f for _, _, files in os.walk(tmp_path / "plugins" / "profile") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces)
  off = Profile(str(tmp_path / "off"), first_step=0, num_steps=0)
  off(1, x)
  assert not os.path.exists(tmp_path / "off")


def _tensorboard_texts(logdir) -> dict[str, list[tuple[int, str]]]:
  """{tag: [(step, text)]} of the text summaries in `logdir`'s event files (TFRecords)."""
  import struct  # noqa: PLC0415

  from tensorboardX.proto import event_pb2  # noqa: PLC0415

  out: dict[str, list[tuple[int, str]]] = {}
  for name in sorted(n for n in os.listdir(logdir) if n.startswith("events.out.tfevents")):
    data = open(os.path.join(logdir, name), "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "text":
          text = value.tensor.string_val[0].decode()
          out.setdefault(value.tag, []).append((event.step, text))
  return out


def test_texts_go_to_tensorboards_text_tab(tmp_path):
  writer = metric_writers.create_default_writer(str(tmp_path), lead=True, console=False)
  writer.write_texts(20, {"text/samples": "1. 'a cat'\n2. 'a dog'\n"})
  writer.close()
  texts = _tensorboard_texts(tmp_path)
  (tag,) = [t for t in texts if t.startswith("text/samples")]
  ((step, text),) = texts[tag]
  assert step == 20 and text == "    1. 'a cat'\n    2. 'a dog'"  # indented: shown verbatim
