"""Run outputs: metrics.jsonl, TensorBoard event files, PNG image grids, a console progress line.

Only the lead process writes; the others get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np
from PIL import Image


def to_python(value: Any) -> Any:
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def tile_grid(grid: np.ndarray, *, pad: int = 1) -> np.ndarray:
  """[rows, cols, H, W, C] in [0, 1] -> one uint8 image [rows*(H+pad)+pad, ..., C]."""
  grid = np.clip(np.asarray(grid, np.float32), 0.0, 1.0)
  rows, cols, h, w, c = grid.shape
  scale = max(1, 32 // h)  # small images (8x8 digits) are enlarged so a grid is legible
  if scale > 1:
    grid = grid.repeat(scale, axis=2).repeat(scale, axis=3)
    h, w = h * scale, w * scale
  out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
  for r in range(rows):
    for k in range(cols):
      y, x = pad + r * (h + pad), pad + k * (w + pad)
      out[y:y + h, x:x + w] = grid[r, k]
  return np.round(out * 255).astype(np.uint8)


class MetricWriter:
  """Writes each logged point to metrics.jsonl, TensorBoard and (for eval) the console."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter
      os.makedirs(os.path.join(workdir, "images"), exist_ok=True)
      self._tb = SummaryWriter(logdir=workdir, flush_secs=10)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)

  def drop_rows_after(self, step: int) -> None:
    """On resume: rows past the restored checkpoint describe lost work and will be redone."""
    if not self.enabled:
      return
    path = os.path.join(self.workdir, "metrics.jsonl")
    self._jsonl.close()
    with open(path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          keep.append(line if line.endswith("\n") else line + "\n")
      except (ValueError, KeyError, TypeError):
        continue  # A line cut short by a kill.
    if len(keep) != len(lines):
      with open(path + ".tmp", "w") as f:
        f.writelines(keep)
      os.replace(path + ".tmp", path)
    self._jsonl = open(path, "a", buffering=1)

  def write_scalars(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "split": split}
    row.update({k: to_python(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    for name, value in row.items():
      if name not in ("step", "split") and isinstance(value, (int, float)):
        self._tb.add_scalar(f"{split}/{name}", value, step)

  def write_images(self, step: int, grids: Mapping[str, np.ndarray]) -> list[str]:
    """Saves `images/{name}_{step:07d}.png` for each [rows, cols, H, W, C] grid."""
    if not self.enabled:
      return []
    paths = []
    for name, grid in grids.items():
      image = tile_grid(grid)
      path = os.path.join(self.workdir, "images", f"{name}_{int(step):07d}.png")
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
      self._tb.add_image(name, image, step, dataformats="HWC")
      paths.append(path)
    return paths

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if self.enabled:
      text = "\n".join(f"    --{k}={v}" for k, v in sorted(hparams.items()))
      self._tb.add_text("flags", text, 0)

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _format(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}" if math.isfinite(value) else str(value)
  return str(value)


class ProgressLine:
  """`step 500/5000 | loss 0.0123 | 250 steps/s | 64,000 ex/s | ETA 0:00:18` on the console."""

  def __init__(self, total_steps: int, *, batch_size: int, enabled: bool = True, stream=None):
    self.total = total_steps
    self.batch_size = batch_size
    self.enabled = enabled
    self.stream = stream or sys.stdout
    self._last_time: float | None = None
    self._last_step: int | None = None

  def start(self, step: int) -> None:
    self._last_time, self._last_step = time.perf_counter(), step

  def report(self, step: int, metrics: Mapping[str, Any], *, keys=("loss",)) -> float:
    """Prints one line; returns steps/s since the previous report."""
    now = time.perf_counter()
    rate = 0.0
    if self._last_time is not None and step > self._last_step:
      rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    if self.enabled:
      parts = [f"step {step}/{self.total}"]
      parts += [f"{k} {_format(to_python(metrics[k]))}" for k in keys if k in metrics]
      if rate:
        eta = int((self.total - step) / rate)
        parts += [f"{rate:.1f} steps/s", f"{rate * self.batch_size:,.0f} ex/s",
                  f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"]
      print(" | ".join(parts), file=self.stream, flush=True)
    return rate

  def report_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
    if self.enabled:
      text = " ".join(f"{k}={_format(to_python(v))}" for k, v in sorted(metrics.items()))
      print(f"eval at step {step}: {text}", file=self.stream, flush=True)
