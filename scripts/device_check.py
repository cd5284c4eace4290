"""A device check in a few minutes: what a lent accelerator does with dlu, as one markdown report.

  scripts/device_check.sh [REPORT.md] [--quick] [--budget_s=450]

Sections: the device kind and versions (nvidia-smi, jax, jaxlib, flax); the throughput part of
scripts/benchmark.py for dlu on every model, in float32 and (where --compute_dtype exists)
bfloat16; one short run of every family through experiments.train (its final loss, steps/s,
TFLOP/s and MFU from metrics.jsonl); 1-vs-N-device agreement of the same run where N > 1 (on a
CPU: 1 vs 2 fake devices). Every job runs in its own process (the parent never starts JAX, so
the accelerator's memory is the job's) and the report is rewritten after each, so a check cut
short keeps what it measured. Jobs that would start past --budget_s are listed as skipped.
--quick: a CPU-sized check (the seed autoencoder's throughput, the autoencoder family, float32
only on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("ae_seed", "ae_mlp", "ae_conv", "conv_vae", "dcgan")
# family -> flagfile of its short run (experiments/configs/), on scikit-learn's digits.
FAMILY_RUNS = {
  "autoencoder": "ae_digits",
  "vae": "vae_digits",
  "gan": "dcgan_digits",
  "contrastive": "simclr_digits",
  "dec": "dec_digits",
}
RUN_FLAGS = (
  "--num_steps=20",
  "--log_every=10",
  "--eval_every=20",
  "--checkpoint_every=20",
  "--evaluators=metrics",
)
AGREEMENT_RTOL = 1e-3

INFO = r"""
import json, sys
import jax, jaxlib, flax
from absl import flags
import dlu.train.loop  # noqa: F401  (defines the run's flags)
d = jax.devices()
print(json.dumps({
  "backend": jax.default_backend(), "device_count": len(d),
  "kinds": sorted({x.device_kind for x in d}), "python": sys.version.split()[0],
  "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
  "compute_dtype": "compute_dtype" in flags.FLAGS,
}))
"""


class Check:
  """The report, rewritten after every job, and the time left."""

  def __init__(self, path: str, budget_s: float, work: str):
    self.path, self.deadline, self.work = path, time.time() + budget_s, work
    self.sections: list[tuple[str, list[str]]] = []
    self.skipped: list[str] = []

  def left(self) -> float:
    return self.deadline - time.time()

  def section(self, title: str) -> list[str]:
    lines: list[str] = []
    self.sections.append((title, lines))
    return lines

  def write(self) -> None:
    out = ["# Device check", "", f"`{' '.join(['scripts/device_check.sh', *sys.argv[1:]])}`", ""]
    for title, lines in self.sections:
      out += [f"## {title}", "", *lines, ""]
    if self.skipped:
      out += ["## Skipped (over the time budget)", "", *[f"- {s}" for s in self.skipped], ""]
    with open(self.path, "w", encoding="utf-8") as f:
      f.write("\n".join(out))

  def run(self, what: str, args: list[str], env: dict | None = None, need_s: float = 20):
    """(returncode, stdout + stderr) of a job, or None when the budget cannot hold it."""
    if self.left() < need_s:
      self.skipped.append(what)
      return None
    t = time.time()
    try:
      proc = subprocess.run(
        args,
        cwd=ROOT,
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=max(self.left(), 1),
      )
      code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
      code, out = -9, f"timed out after {time.time() - t:.0f} s\n{e.stdout or ''}{e.stderr or ''}"
    print(f"{what}: exit {code} in {time.time() - t:.0f} s", flush=True)
    return code, out


def _tail(out: str, n: int = 3) -> str:
  lines = [line for line in str(out).splitlines() if line.strip()]
  return " / ".join(lines[-n:]).replace("|", "\\|")[:300]


def _env(devices: int | None = None, backend: str = "cpu") -> dict:
  """The environment of a job; `devices` = 1 or N asks for that many (CPU: fake devices)."""
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  if backend == "cpu" and devices:
    flags += f" --xla_force_host_platform_device_count={devices}"
  elif devices == 1:
    env["CUDA_VISIBLE_DEVICES"] = "0"
  env["XLA_FLAGS"] = flags.strip()
  return env


def device_info(check: Check) -> dict:
  lines = check.section("Device and versions")
  result = check.run("device info", [sys.executable, "-c", INFO], _env(), need_s=5)
  info = {}
  if result and result[0] == 0:
    info = json.loads(result[1].strip().splitlines()[-1])
    lines += [
      f"- devices: {info['device_count']} x {', '.join(info['kinds'])} ({info['backend']})",
      f"- python {info['python']}, jax {info['jax']}, jaxlib {info['jaxlib']}, flax {info['flax']}",
      f"- --compute_dtype: {'present' if info['compute_dtype'] else 'absent (float32 only)'}",
    ]
  else:
    lines.append(f"- JAX did not start: {_tail(result[1] if result else 'skipped')}")
  if shutil.which("nvidia-smi"):
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
    lines += ["", "```", smi.stdout.strip() or smi.stderr.strip(), "```"]
  else:
    lines.append("- nvidia-smi: not on this machine")
  check.write()
  return info


def synthetic_images(path: str, n: int) -> str:
  """An npz of random 28x28x1 uint8 images (the benchmark's shapes; examples/s do not depend on
  the pixels), so the check needs no downloaded dataset."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  np.savez(path, x=x, x_test=x[: max(n // 8, 256)])
  return f"npz:{path}"


def throughput(check: Check, dtype: str, models: list[str], dataset: str, quick: bool) -> None:
  lines = check.section(f"Throughput, {dtype} (scripts/benchmark.py --throughput, dlu)")
  out_dir = os.path.join(check.work, f"benchmark_{dtype}")
  args = [
    sys.executable,
    "scripts/benchmark.py",
    "--throughput",
    "--frameworks=dlu",
    f"--models={','.join(models)}",
    f"--dataset={dataset}",
    f"--out={out_dir}",
  ]
  args += ["--quick"] if quick else ["--repeats=3", "--seconds=1"]
  if dtype != "float32":
    args.append(f"--dlu_flags=compute_dtype={dtype}")
  result = check.run(f"throughput {dtype}", args, _env(), need_s=15 * len(models))
  md = os.path.join(out_dir, "benchmark.md")
  if result is None:
    lines.append("skipped (time budget)")
  elif result[0] == 0 and os.path.isfile(md):
    with open(md, encoding="utf-8") as f:
      body = f.read().split("\n", 1)[-1]  # without its own title
    lines.append(re.sub(r"^#+ ", "#### ", body, flags=re.M).strip())
  else:
    lines.append(f"failed (exit {result[0]}): {_tail(result[1])}")
  check.write()


def train_run(check: Check, name: str, flagfile: str, extra: list[str], env: dict) -> dict:
  """One short experiments.train run; its last train row, exit status and the peak line."""
  workdir = os.path.join(check.work, name)
  args = [
    sys.executable,
    "-m",
    "experiments.train",
    f"--flagfile=experiments/configs/{flagfile}.flags",
    f"--workdir={workdir}",
    *RUN_FLAGS,
    *extra,
  ]
  t = time.time()
  result = check.run(name, args, env, need_s=15)
  row = {"name": name, "seconds": time.time() - t, "workdir": workdir}
  if result is None:
    return {**row, "status": "skipped"}
  row["status"] = "ok" if result[0] == 0 else f"exit {result[0]}: {_tail(result[1])}"
  peak = re.search(r"^Train step: .*$", result[1], re.M)
  row["peak"] = peak.group(0) if peak else ""
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    row.update(train[-1] if train else {})
  return row


def _fmt(value, spec: str = ".4g") -> str:
  return format(value, spec) if isinstance(value, (int, float)) else "-"


def _loss(row: dict) -> str:
  """The loss of a train row; a GAN's as `d D / g G`."""
  if "loss" in row:
    return _fmt(row["loss"])
  if "d_loss" in row and "g_loss" in row:
    return f"d {_fmt(row['d_loss'])} / g {_fmt(row['g_loss'])}"
  return "-"


def family_runs(check: Check, dtype: str, families: list[str], info: dict) -> list[dict]:
  lines = check.section(f"One short run per family, {dtype} (experiments.train)")
  lines += [
    f"Flags: the family's `experiments/configs/*_digits.flags` with `{' '.join(RUN_FLAGS)}`.",
    "",
    "| family | flagfile | status | step | loss | steps/s | TFLOP/s | MFU | wall s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  extra = [f"--compute_dtype={dtype}"] if info.get("compute_dtype") else []
  env = _env(1 if info.get("backend", "cpu") == "cpu" else None, info.get("backend", "cpu"))
  rows, peaks, ae_dir = [], set(), None
  for family in families:
    more = []
    if family == "dec":  # DEC starts from a trained autoencoder run
      if ae_dir is None:
        ae_dir = train_run(check, f"dec_init_{dtype}", "ae_digits", extra, env)["workdir"]
      more = [f"--init_from={ae_dir}"]
    row = train_run(check, f"{family}_{dtype}", FAMILY_RUNS[family], extra + more, env)
    if family == "autoencoder" and row["status"] == "ok":
      ae_dir = row["workdir"]
    rows.append(row)
    mfu = f"{100 * row['mfu']:.3g}%" if isinstance(row.get("mfu"), float) else "-"
    lines.append(
      f"| {family} | {FAMILY_RUNS[family]} | {row['status']} | {row.get('step', '-')} | "
      f"{_loss(row)} | {_fmt(row.get('steps_per_s'), '.1f')} | "
      f"{_fmt(row.get('tflops'), '.3g')} | {mfu} | {row['seconds']:.0f} |"
    )
    if row.get("peak"):
      peaks.add(re.sub(r"^Train step: [\d.e+]+ GFLOP; ", "", row["peak"]))
    check.write()
  lines += ["", *[f"- {p}" for p in sorted(peaks)]]
  check.write()
  return rows


def agreement(check: Check, info: dict, n_row: dict | None) -> None:
  """The autoencoder's run on 1 device beside N devices (CPU: 1 and 2 fake devices)."""
  lines = check.section("1-vs-N-device agreement")
  backend, n = info.get("backend", "cpu"), int(info.get("device_count", 1))
  if n_row is None and (backend == "cpu" or n > 1):  # the autoencoder was not among the families
    env = _env(1 if backend == "cpu" else None, backend)
    n_row = train_run(check, "agreement_default", FAMILY_RUNS["autoencoder"], [], env)
  if backend == "cpu":
    n = 2
    one = n_row
    many = train_run(check, "agreement_n", FAMILY_RUNS["autoencoder"], [], _env(2, backend))
  elif n < 2:
    lines.append(f"one {backend} device: nothing to compare")
    check.write()
    return
  elif backend != "gpu":
    lines.append(f"{backend}: one device is not chosen here; not compared")
    check.write()
    return
  else:
    many = n_row
    one = train_run(check, "agreement_1", FAMILY_RUNS["autoencoder"], [], _env(1, backend))
  if not one or not many or "loss" not in one or "loss" not in many:
    lines.append("a run did not finish: not compared")
    check.write()
    return
  rel = abs(one["loss"] - many["loss"]) / max(abs(one["loss"]), 1e-12)
  verdict = "agree" if rel <= AGREEMENT_RTOL else "DIFFER"
  lines.append(
    f"ae_digits, float32, step {one.get('step')}: loss {one['loss']:.6g} on 1 device, "
    f"{many['loss']:.6g} on {n}: relative difference {rel:.2g} ({verdict}; tolerance "
    f"{AGREEMENT_RTOL:g})"
  )
  check.write()


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("report", nargs="?", default="device_report.md", help="the markdown report")
  p.add_argument("--quick", action="store_true", help="a CPU-sized check (one model, one family)")
  p.add_argument("--budget_s", type=float, default=450, help="no job starts after this")
  p.add_argument("--models", default=None, help="benchmarked models (default: all; quick: ae_seed)")
  p.add_argument("--families", default=None, help="families run (default: all; quick: autoencoder)")
  args = p.parse_args(argv)
  models = (args.models or ("ae_seed" if args.quick else ",".join(MODELS))).split(",")
  families = (args.families or ("autoencoder" if args.quick else ",".join(FAMILY_RUNS))).split(",")
  for name, given, known in (("models", models, MODELS), ("families", families, FAMILY_RUNS)):
    if not given or set(given) - set(known):
      print(f"device_check: --{name}: expected some of {', '.join(known)}", file=sys.stderr)
      return 2
  t0 = time.time()
  with tempfile.TemporaryDirectory(prefix="dlu_device_check_") as work:
    check = Check(os.path.abspath(args.report), args.budget_s, work)
    info = device_info(check)
    dataset = synthetic_images(os.path.join(work, "images.npz"), 1024 if args.quick else 8192)
    dtypes = ["float32"] + (["bfloat16"] if info.get("compute_dtype") else [])
    throughput(check, "float32", models, dataset, args.quick)
    rows = family_runs(check, "float32", families, info)
    ae = next((r for r in rows if r["name"].startswith("autoencoder")), None)
    agreement(check, info, ae)
    if info.get("backend") != "cpu" or not args.quick:  # a quick CPU check: float32 only
      for dtype in dtypes[1:]:
        throughput(check, dtype, models, dataset, args.quick)
        family_runs(check, dtype, families, info)
    check.section("Time").append(f"{time.time() - t0:.0f} s in all")
    check.write()
  print(f"Written: {args.report}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
