"""Peak FLOP/s of the devices a run uses, for its model FLOPs utilisation (MFU).

Accelerators: the vendor's dense (no sparsity) per-chip figure, looked up by `device_kind`.
`float32` is the figure a float32 matmul reaches under JAX's default matmul precision: TF32
tensor cores on NVIDIA GPUs from Ampere on, plain FP32 on older ones, and bf16 passes of the MXU
on TPUs (which publish no other figure). CPU: a short float32 matmul probe, run once per
machine and kept in `CACHE_FILE` under $DLU_CACHE_DIR (else ~/.cache/dlu), the folder the
compilation cache lives in; a CPU's bfloat16 peak is taken as its float32 one.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Sequence
from typing import Any

from dlu.files import atomic_write
from dlu.runtime import compilation_cache

CACHE_FILE = "peak_flops.json"
PROBE_SIZE = 1024  # [N, N] @ [N, N] float32: 2.1 GFLOP, a few ms to ~0.1 s on a CPU
PROBE_REPEATS = 5

# (pattern searched in the lower-case device_kind, float32, bfloat16 TFLOP/s per chip, dense). The
# first match wins, so more specific names come first. None: no such units (bf16 on V100 and T4).
PEAK_TFLOPS: tuple[tuple[str, float, float | None], ...] = (
  # NVIDIA H200 datasheet (SXM): TF32 tensor 989 / 2 (sparsity), BF16 1,979 / 2.
  (r"h200 nvl", 417.5, 835.5),  # H200 NVL: TF32 835 / 2, BF16 1,671 / 2
  (r"h200", 494.7, 989.4),
  # NVIDIA H100 datasheet: SXM TF32 989 / 2, BF16 1,979 / 2; PCIe 756 / 2, 1,513 / 2; NVL
  # 835 / 2, 1,671 / 2.
  (r"h100 pcie", 378.0, 756.5),
  (r"h100 nvl", 417.5, 835.5),
  (r"h100", 494.7, 989.4),
  # NVIDIA A100 datasheet: TF32 tensor 156, BF16 312 (SXM and PCIe alike).
  (r"a100", 156.0, 312.0),
  # NVIDIA L4 datasheet: TF32 120 / 2, BF16 242 / 2.
  (r"\bl4\b", 60.0, 121.0),
  # NVIDIA V100 datasheet: FP32 15.7 (SXM2), 14 (PCIe); no bfloat16 units.
  (r"v100-pcie", 14.0, None),
  (r"v100", 15.7, None),
  # NVIDIA T4 datasheet: FP32 8.1; no bfloat16 units.
  (r"\bt4\b", 8.1, None),
  # Google Cloud TPU system architecture pages, BF16 per chip: v6e (Trillium) 918, v5p 459,
  # v5e 197, v4 275. device_kind: "TPU v6 lite", "TPU v5p" / "TPU v5", "TPU v5 lite", "TPU v4".
  (r"tpu v6", 918.0, 918.0),
  (r"tpu v5 lite", 197.0, 197.0),
  (r"tpu v5e", 197.0, 197.0),
  (r"tpu v5", 459.0, 459.0),
  (r"tpu v4", 275.0, 275.0),
)


def cache_root() -> str:
  """The folder dlu keeps per-machine files in (the compilation cache's parent)."""
  return os.path.dirname(compilation_cache.default_dir())


def known_peak(device_kind: str, dtype: str = "float32") -> float | None:
  """FLOP/s of one chip of `device_kind` for matmuls in `dtype` ("float32" or "bfloat16");
  None when the kind is not in PEAK_TFLOPS or has no such units."""
  kind = device_kind.lower()
  for pattern, f32, bf16 in PEAK_TFLOPS:
    if re.search(pattern, kind):
      tflops = bf16 if dtype == "bfloat16" else f32
      return None if tflops is None else tflops * 1e12
  return None


def _machine_key() -> str:
  """What the probe's figure depends on: this host, its CPU and the cores this process may use."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  import jax  # noqa: PLC0415

  return f"{platform.node()}|{platform.processor() or platform.machine()}|{cores}|{jax.__version__}"


def probe_cpu_flops(size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS) -> float:
  """FLOP/s of a jitted float32 [size, size] matmul on the CPU, the best of `repeats`."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  cpu = jax.devices("cpu")[0]
  a = jax.device_put(jnp.ones((size, size), jnp.float32), cpu)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()  # compiled outside the timing
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * size**3 / max(best, 1e-9)


def cpu_peak(cache_dir: str | None = None) -> float:
  """This machine's CPU float32 FLOP/s: the probe's figure, measured once and then read from
  `cache_dir/CACHE_FILE` (default `cache_root()`)."""
  path = os.path.join(cache_dir or cache_root(), CACHE_FILE)
  key = _machine_key()
  cached: dict[str, Any] = {}
  try:
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
    if isinstance(cached, dict) and float(cached.get(key, {}).get("float32", 0)) > 0:
      return float(cached[key]["float32"])
  except (OSError, ValueError, TypeError, AttributeError):  # none yet, or unreadable: probe
    cached = cached if isinstance(cached, dict) else {}
  flops = probe_cpu_flops()
  cached[key] = {"float32": flops, "probe": f"float32 matmul {PROBE_SIZE}x{PROBE_SIZE}"}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as f:
      json.dump(cached, f, indent=1)
  except OSError:  # a read-only cache: measured again next time
    pass
  return flops


def run_peak(devices: Sequence[Any], dtype: str = "float32") -> tuple[float | None, str]:
  """(the FLOP/s of all of `devices` together, or None when unknown; how it was found).

  CPU devices of one process share its cores (fake devices included), so the probe's figure
  counts once per process."""
  kinds = sorted({d.device_kind for d in devices})
  if all(d.platform == "cpu" for d in devices):
    processes = len({d.process_index for d in devices})
    peak = cpu_peak() * processes
    return peak, f"CPU float32 matmul probe x {processes} process(es), {peak / 1e12:.3g} TFLOP/s"
  per_chip = [known_peak(k, dtype) for k in kinds]
  if len(kinds) != 1 or per_chip[0] is None:
    return None, f"no known {dtype} peak for device kind {', '.join(map(repr, kinds))}"
  peak = per_chip[0] * len(devices)
  return peak, f"{len(devices)} x {kinds[0]} {dtype}, {peak / 1e12:.4g} TFLOP/s"
