"""Work the training loop does every so many steps, as small objects it calls after each
dispatch (the shape of clu's periodic actions).

    actions = [ReportProgress(num_steps, every_steps=100, ...), PeriodicCallback(...)]
    for action in actions:
      action(step, final=step == num_steps)

An action runs when `step` is a multiple of its `every_steps` or the run's last step, and
the `every_steps` of all actions bound the length of a multi-step dispatch
(`dlu.data.feeds.dispatch_length`), so with several steps per dispatch they still run at
the same steps as with one. `Profile` traces a few steps once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from dlu.runtime.metric_writers import MetricWriter, format_value, to_python


class PeriodicAction:
  """Runs `run(step, **kwargs)` when `due(step, final)`; returns whether it ran."""

  def __init__(self, *, every_steps: int, on_final: bool = True):
    self.every_steps, self.on_final = every_steps, on_final

  def due(self, step: int, final: bool = False) -> bool:
    return step % self.every_steps == 0 or (final and self.on_final)

  def __call__(self, step: int, *, final: bool = False, **kwargs: Any) -> bool:
    if not self.due(step, final):
      return False
    self.run(step, **kwargs)
    return True

  def run(self, step: int, **kwargs: Any) -> None:
    raise NotImplementedError


class PeriodicCallback(PeriodicAction):
  """Calls `callback(step, **kwargs)` on schedule."""

  def __init__(self, *, every_steps: int, callback: Callable[..., Any], on_final: bool = True):
    super().__init__(every_steps=every_steps, on_final=on_final)
    self.callback = callback

  def run(self, step, **kwargs):
    self.callback(step, **kwargs)


class ReportProgress(PeriodicAction):
  """The train metrics of a step: a `train` row to `writer` (with `steps_per_s`) and
  `step 500/5000 | loss 0.0123 | 250 steps/s | 64,000 ex/s | 1.2 TFLOP/s | MFU 3.4% | ETA 0:00:18`
  on the console.

  `run(step, metrics=...)` keeps `rate`, the steps/s since the last report (evaluations
  excluded: call `restart(step)` after one). Given `flops_per_step` (the step's FLOPs), the row
  adds `tflops`, the TFLOP/s achieved at that rate, and given `peak_flops` (all devices'
  FLOP/s) `mfu`, their ratio: both from the timings the steps/s has, no extra waits.
  """

  def __init__(
    self,
    num_steps: int,
    *,
    every_steps: int,
    batch_size: int,
    writer: MetricWriter | None = None,
    keys: Sequence[str] = ("loss",),
    enabled: bool = True,
    stream=None,
    flops_per_step: float | None = None,
    peak_flops: float | None = None,
  ):
    super().__init__(every_steps=every_steps)
    self.num_steps, self.batch_size, self.keys = num_steps, batch_size, tuple(keys)
    self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
    self.writer = writer or MetricWriter()
    self.enabled, self.stream = enabled, stream or sys.stdout
    self.rate = 0.0
    self._last_time: float | None = None
    self._last_step: int | None = None

  def restart(self, step: int) -> None:
    """Time from now: what happened since the last report does not count against steps/s."""
    self._last_time, self._last_step = time.perf_counter(), step

  def run(self, step: int, *, metrics: Mapping[str, Any]) -> None:
    now = time.perf_counter()
    self.rate = 0.0
    if self._last_time is not None and step > self._last_step:
      self.rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    if self.enabled:
      print(self.line(step, metrics), file=self.stream, flush=True)
    self.writer.write_scalars(step, "train", {**metrics, **self.throughput()})

  def throughput(self) -> dict[str, float]:
    """`steps_per_s`, and `tflops` and `mfu` where the step's FLOPs and the peak are known."""
    out = {"steps_per_s": self.rate}
    if self.flops_per_step and self.rate:
      out["tflops"] = self.rate * self.flops_per_step / 1e12
      if self.peak_flops:
        out["mfu"] = out["tflops"] * 1e12 / self.peak_flops
    return out

  def line(self, step: int, metrics: Mapping[str, Any]) -> str:
    parts = [f"step {step}/{self.num_steps}"]
    parts += [f"{k} {format_value(to_python(metrics[k]))}" for k in self.keys if k in metrics]
    if self.rate:
      eta = int((self.num_steps - step) / self.rate)
      parts += [
        f"{self.rate:.1f} steps/s",
        f"{self.rate * self.batch_size:,.0f} ex/s",
      ]
      speed = self.throughput()
      if "tflops" in speed:
        parts.append(f"{speed['tflops']:.3g} TFLOP/s")
      if "mfu" in speed:
        parts.append(f"MFU {100 * speed['mfu']:.3g}%")
      parts += [
        f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}",
      ]
    return " | ".join(parts)


class Profile:
  """Traces `num_steps` steps once with the JAX profiler, from the first call at or after
  `first_step`, into `logdir/plugins/profile/RUN/` (TensorBoard's profile plugin and Perfetto
  read it). Call it after each dispatch with the step reached and something to wait on."""

  def __init__(self, logdir: str, *, first_step: int, num_steps: int, enabled: bool = True):
    self.logdir, self.first_step, self.num_steps = logdir, first_step, num_steps
    self.enabled = enabled and num_steps > 0
    self.started_at: int | None = None
    self.done = False

  def __call__(self, step: int, outputs: Any = None, *, final: bool = False) -> None:
    if not self.enabled or self.done:
      return
    if self.started_at is None:
      if step >= self.first_step and not final:
        jax.block_until_ready(outputs)  # Earlier work stays out of the trace.
        jax.profiler.start_trace(self.logdir)
        self.started_at = step
      return
    if step >= self.started_at + self.num_steps or final:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.done = True
      print(
        f"Profiled steps {self.started_at + 1}-{step} into {self.logdir}/plugins/profile",
        flush=True,
      )

  def close(self) -> None:
    """Stops a trace still running (a run that ended or failed inside it)."""
    if self.started_at is not None and not self.done:
      jax.profiler.stop_trace()
      self.done = True
