"""Milliseconds per convolution op: flax's native layers beside dlu's, on this machine.

  python scripts/conv_probe.py                 # the conv VAE's and DCGAN's layers, batch 256
  python scripts/conv_probe.py --batch=64 --repeats=9

For each layer: forward, input gradient and kernel gradient, each jitted on its own,
best of `--repeats` runs, native and dlu interleaved so that machine load hits both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dlu.models import layers  # noqa: E402

# (name, dlu layer, flax layer, kernel, stride, input H=W, in channels, out channels)
OPS = [
  ("Conv 1->32 3x3 s2, 28->14", "Conv", 3, 2, 28, 1, 32),
  ("Conv 32->64 3x3 s2, 14->7", "Conv", 3, 2, 14, 32, 64),
  ("ConvT 64->64 3x3 s2, 7->14", "ConvTranspose", 3, 2, 7, 64, 64),
  ("ConvT 64->32 3x3 s2, 14->28", "ConvTranspose", 3, 2, 14, 64, 32),
  ("ConvT 32->1 3x3 s1, 28", "ConvTranspose", 3, 1, 28, 32, 1),
  ("DCGAN ConvT 128->64 4x4 s2, 7->14", "ConvTranspose", 4, 2, 7, 128, 64),
  ("DCGAN ConvT 64->1 4x4 s2, 14->28", "ConvTranspose", 4, 2, 14, 64, 1),
  ("DCGAN Conv 1->64 4x4 s2, 28->14", "Conv", 4, 2, 28, 1, 64),
  ("DCGAN Conv 64->128 4x4 s2, 14->7", "Conv", 4, 2, 14, 64, 128),
]


def _programs(module):
  """Jitted forward, input gradient and kernel gradient of `module`: (params, x, probe) -> ..."""
  apply = lambda p, x: module.apply({"params": p}, x)
  fwd = jax.jit(lambda p, x, probe: apply(p, x))
  # The output gradient is an argument: as a constant, XLA would constant-fold its padding.
  dx = jax.jit(lambda p, x, probe: jax.grad(lambda x: jnp.vdot(apply(p, x), probe))(x))
  dw = jax.jit(
    lambda p, x, probe: jax.grad(lambda k: jnp.vdot(apply({**p, "kernel": k}, x), probe))(
      p["kernel"]
    )
  )
  return {"fwd": fwd, "dx": dx, "dw": dw}


def _time(fn, *args) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--ops", default="", help="comma-separated substrings of op names to run")
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  print(
    f"batch {args.batch}, best of {args.repeats}, {os.cpu_count()} CPUs, "
    f"load {os.getloadavg()[0]:.1f}\n"
  )
  print("| op | GFLOP (fwd) | native fwd / dx / dw ms | dlu fwd / dx / dw ms | speed-up (sum) |")
  print("|---|---|---|---|---|")
  for name, layer, k, s, hw, cin, cout in OPS:
    if args.ops and not any(o in name for o in args.ops.split(",")):
      continue
    x = jnp.asarray(rng.normal(size=(args.batch, hw, hw, cin)), jnp.float32)
    native = getattr(nn, layer)(cout, (k, k), strides=(s, s), padding="SAME")
    ours = getattr(layers, layer)(cout, (k, k), strides=(s, s), padding="SAME")
    shapes = jax.eval_shape(native.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(
      lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.1, jnp.float32), shapes
    )
    out_shape = jax.eval_shape(native.apply, {"params": params}, x).shape
    probe = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    progs = {"native": _programs(native), "dlu": _programs(ours)}
    best = {(impl, op): np.inf for impl in progs for op in ("fwd", "dx", "dw")}
    for impl in progs:
      for op, fn in progs[impl].items():
        _time(fn, params, x, probe)  # compile
    for _ in range(args.repeats):
      for op in ("fwd", "dx", "dw"):
        for impl in progs:
          best[impl, op] = min(best[impl, op], _time(progs[impl][op], params, x, probe))
    ms = {impl: [1e3 * best[impl, op] for op in ("fwd", "dx", "dw")] for impl in progs}
    # Useful FLOPs: each input (transposed) or output (conv) position meets k*k taps.
    positions = (hw * hw) if layer == "ConvTranspose" else (out_shape[1] * out_shape[2])
    gflop = 2 * args.batch * positions * k * k * cin * cout / 1e9
    fmt = lambda v: " / ".join(f"{t:.1f}" for t in v)
    print(
      f"| {name} | {gflop:.2f} | {fmt(ms['native'])} | {fmt(ms['dlu'])} | "
      f"{sum(ms['native']) / sum(ms['dlu']):.1f}x |",
      flush=True,
    )
  print(f"\nload at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main(sys.argv[1:])
