"""Where a run's metrics and images go, behind one small interface (as clu's MetricWriter).

    writer = metric_writers.create_default_writer(workdir, lead=is_lead_process())
    writer.write_scalars(step, "train", {"loss": 0.1})
    writer.write_images(step, {"samples": grid})   # [rows, cols, H, W, C] in [0, 1]

Each sink is a `MetricWriter`: `JsonlWriter` (metrics.jsonl, one row per call), `TensorBoardWriter`
(event files through tensorboardX, no TensorFlow), `ImageFileWriter` (images/NAME_STEP.png) and
`ConsoleWriter` (a line per eval row); `MultiWriter` composes them. Only the lead process
writes: the others get a `MultiWriter` of nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from dlu import files
from dlu.errors import UsageError
from dlu.ops.grids import tile_grid


def to_python(value: Any) -> Any:
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def format_value(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}" if math.isfinite(value) else str(value)
  return str(value)


class MetricWriter:
  """The interface: every method may be called by every process; sinks ignore what they
  do not store. `split` names the row's kind: "train", "valid" and "test" (evals of
  those splits), "generalisation", "evaluate"."""

  def write_scalars(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    """One row of named numbers (or arrays, stored as lists) at `step`."""

  def write_images(self, step: int, grids: Mapping[str, np.ndarray]) -> list[str]:
    """Image grids [rows, cols, H, W, C] in [0, 1]; returns the files written, if any."""
    return []

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's flags."""

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Named blocks of text at `step` (a text run's samples: TensorBoard's text tab)."""

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class MultiWriter(MetricWriter):
  """Hands every call to each of `writers`, in order."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = tuple(writers)

  def write_scalars(self, step, split, metrics):
    for w in self.writers:
      w.write_scalars(step, split, metrics)

  def write_images(self, step, grids):
    return [path for w in self.writers for path in w.write_images(step, grids)]

  def write_hparams(self, hparams):
    for w in self.writers:
      w.write_hparams(hparams)

  def write_texts(self, step, texts):
    for w in self.writers:
      w.write_texts(step, texts)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


class JsonlWriter(MetricWriter):
  """metrics.jsonl: one JSON object per row, `{"step": S, "split": NAME, metric: value, ...}`."""

  def __init__(self, path: str):
    self.path = path
    self._file = open(path, "a", buffering=1)

  def drop_rows_after(self, step: int) -> None:
    """On resume: rows past the restored checkpoint describe lost work and will be redone."""
    self._file.close()
    with open(self.path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          keep.append(line if line.endswith("\n") else line + "\n")
      except (ValueError, KeyError, TypeError):
        continue  # A line cut short by a kill.
    if len(keep) != len(lines):
      with files.atomic_write(self.path) as f:
        f.writelines(keep)
    self._file = open(self.path, "a", buffering=1)

  def write_scalars(self, step, split, metrics):
    row = {"step": int(step), "split": split}
    row.update({k: to_python(v) for k, v in metrics.items()})
    self._file.write(json.dumps(row) + "\n")

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class TensorBoardWriter(MetricWriter):
  """Event files in `logdir`: scalars as `split/name`, images by name, the flags and texts by
  name as text (markdown: each block indented, so shown as written)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # noqa: PLC0415  (slow import: only the lead needs it)

    self._tb = SummaryWriter(logdir=logdir, flush_secs=10)

  def write_scalars(self, step, split, metrics):
    for name, value in metrics.items():
      value = to_python(value)
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(f"{split}/{name}", value, step)

  def write_images(self, step, grids):
    for name, grid in grids.items():
      self._tb.add_image(name, tile_grid(grid), step, dataformats="HWC")
    return []

  def write_hparams(self, hparams):
    text = "\n".join(f"    --{k}={v}" for k, v in sorted(hparams.items()))
    self._tb.add_text("flags", text, 0)

  def write_texts(self, step, texts):
    for name, text in texts.items():
      self._tb.add_text(name, "\n".join("    " + line for line in text.splitlines()), step)

  def flush(self):
    self._tb.flush()

  def close(self):
    self._tb.close()


class ImageFileWriter(MetricWriter):
  """`directory/{name}_{step:07d}.png` for each grid."""

  def __init__(self, directory: str):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)

  def write_images(self, step, grids):
    paths = []
    for name, grid in grids.items():
      image = tile_grid(grid)
      path = os.path.join(self.directory, f"{name}_{int(step):07d}.png")
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
      paths.append(path)
    return paths


class ConsoleWriter(MetricWriter):
  """`valid at step 500: mse=0.0123 psnr=19.1` for rows of `splits` (training's progress line
  is `dlu.runtime.periodic.ReportProgress`'s)."""

  def __init__(self, splits: Sequence[str] = ("valid", "test", "generalisation"), stream=None):
    self.splits, self.stream = tuple(splits), stream or sys.stdout

  def write_scalars(self, step, split, metrics):
    if split in self.splits:
      text = " ".join(f"{k}={format_value(to_python(v))}" for k, v in sorted(metrics.items()))
      print(f"{split} at step {step}: {text}", file=self.stream, flush=True)


def create_default_writer(workdir: str, *, lead: bool, console: bool = True) -> MultiWriter:
  """metrics.jsonl, TensorBoard events and PNGs in `workdir` (and eval lines on the console);
  a writer of nothing on processes other than the lead."""
  if not lead:
    return MultiWriter([])
  writers: list[MetricWriter] = [
    ImageFileWriter(os.path.join(workdir, "images")),
    TensorBoardWriter(workdir),
    JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
  ]
  if console:
    writers.append(ConsoleWriter())
  return MultiWriter(writers)


def check_jsonl(path: str) -> None:
  """UsageError naming `path` when it exists but is not a UTF-8 text file a run can append to."""
  if not os.path.lexists(path):
    return
  if not os.path.isfile(path):
    raise UsageError(f"{path} is not a file; expected a run's metrics (JSON lines)")
  files.read_text(path, "a run's metrics (JSON lines)")


def last_row(path: str, split: str) -> dict[str, Any]:
  """The metrics of the last row of `split` in a metrics.jsonl (empty when there is none)."""
  row = {}
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          r = json.loads(line)
        except ValueError:
          continue
        if isinstance(r, dict) and r.get("split") == split:
          row = {k: v for k, v in r.items() if k not in ("step", "split")}
  return row


def drop_rows_after(writer: MetricWriter, step: int) -> None:
  """Truncates the metrics.jsonl rows past `step` of every JsonlWriter in `writer`."""
  for w in getattr(writer, "writers", (writer,)):
    if isinstance(w, JsonlWriter):
      w.drop_rows_after(step)
