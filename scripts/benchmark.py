"""Training throughput of dlu's models beside the same models in PyTorch and Keras.

  python scripts/benchmark.py --out=benchmarks/            # every model, ~10 minutes on 2 cores
  python scripts/benchmark.py --quick --out=/tmp/bench     # a few minutes
  python scripts/benchmark.py --models=ae_conv --frameworks=dlu,pytorch --repeats=9

dlu trains through its real step (`dlu.parallel` and `dlu.device_data`, as `experiments.train`
runs it); the peers are written as their users write them (`benchmark_torch.py`,
`benchmark_keras.py`; install them with `scripts/benchmark_requirements.txt`, or their
rows are skipped). Each framework runs in its own worker process, so thread pools and
memory do not mix, and every repetition visits the frameworks in turn, so load from
other processes falls on all of them alike. Reported per model and framework: examples/s
(median over repetitions, min, max), the time to the first step (compilation included),
dlu's ratio to each peer, and the fraction of the float32 matmul peak that the same run
measures (FLOPs of the model as written, without multiplications by inserted zeros).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

MODELS = ("ae_seed", "ae_mlp", "ae_conv", "conv_vae", "dcgan")
FRAMEWORKS = ("dlu", "pytorch", "keras")
LATENT = {"ae_seed": 128, "ae_mlp": 32, "ae_conv": 32, "conv_vae": 16, "dcgan": 64}
DESCRIPTIONS = {
  "ae_seed": "seed MLP AE 784-128-784, MSE",
  "ae_mlp": "deep MLP AE 784-512-256-32-256-512-784, BCE",
  "ae_conv": "conv AE (Conv 32/64 s2, code 32, ConvT 64/32 s2 + 1 s1), BCE",
  "conv_vae": "conv VAE (same convs, latent 16), ELBO",
  "dcgan": "DCGAN 28x28 (G: dense, ConvT 64 s2, ConvT 1 s2, BN; D: Conv 64/128 s2), D+G step",
}
# dlu flags of each benchmarked model (flags a branch does not define are left out).
DLU_FLAGS = {
  "ae_seed": dict(hidden_units=128, recon_loss="mse"),
  "ae_mlp": dict(widths=["512", "256"], latent_dim=32, recon_loss="bce"),
  "ae_conv": dict(conv_channels=["32", "64"], latent_dim=32, recon_loss="bce"),
  "conv_vae": dict(
    conv_channels=["32", "64"],
    latent_dim=16,
    likelihood="bernoulli",
    binarize="dynamic",
    train_samples=1,
    objective="elbo",
  ),
  "dcgan": dict(
    gan_channels=64,
    latent_dim=64,
    pixel_range="symmetric",
    gan_loss="ns",
    d_steps=1,
    learning_rate=2e-4,
    eval_samples=0,
  ),
}
# Conv steps take 0.1-1 s, so one step per dispatch costs nothing; MLP steps take a few ms.
for _model in ("ae_conv", "conv_vae", "dcgan"):
  DLU_FLAGS[_model]["steps_per_dispatch"] = 1


def parse_args(argv: list[str]) -> argparse.Namespace:
  """argparse, not absl: the dlu worker defines dlu's absl flags (--batch_size, ...) itself."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  csv = lambda s: [v for v in s.split(",") if v]
  p.add_argument("--models", type=csv, default=list(MODELS), help="models to benchmark")
  p.add_argument("--frameworks", type=csv, default=list(FRAMEWORKS), help="dlu, pytorch, keras")
  p.add_argument("--repeats", type=int, default=5, help="timed repetitions (interleaved)")
  p.add_argument("--seconds", type=float, default=3.0, help="target duration of one repetition")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--dataset", default="fashion_mnist", help="dlu dataset name (28x28x1 images)")
  p.add_argument(
    "--steps_per_dispatch",
    type=int,
    default=10,
    help="dlu's --steps_per_dispatch for the MLP models (conv models use 1)",
  )
  p.add_argument("--quick", action="store_true", help="3 repetitions of ~0.5 s: a few minutes")
  p.add_argument("--out", default=None, help="write DIR/benchmark.json and DIR/benchmark.md")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--data", default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


FLAGS = argparse.Namespace()


# --- Workers: one process per framework, JSON lines on stdin/stdout. ---


def _peak_rss_mb() -> float:
  import resource

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_main(framework: str) -> None:
  proto = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # Whatever the libraries print goes to stderr, not into the protocol.
  send = lambda obj: print(json.dumps(obj), file=proto, flush=True)
  import numpy as np

  x = np.load(FLAGS.data)
  try:
    if framework == "dlu":
      import benchmark_dlu as module

      runner = module.Runner(
        FLAGS.dataset, FLAGS.batch_size, FLAGS.steps_per_dispatch, {m: DLU_FLAGS[m] for m in MODELS}
      )
    else:
      module = __import__(f"benchmark_{'torch' if framework == 'pytorch' else 'keras'}")
      runner = module.Runner(x, FLAGS.batch_size)
  except ImportError as e:
    send(
      {
        "error": f"{framework} is not installed ({e}); pip install -r "
        "scripts/benchmark_requirements.txt"
      }
    )
    return
  send({"version": module.version()})
  for line in sys.stdin:
    cmd = json.loads(line)
    try:
      if cmd["cmd"] == "setup":
        first, step_s = runner.setup(cmd["model"], LATENT[cmd["model"]])
        out = {
          "first_step_s": first,
          "step_s": step_s,
          "steps_per_dispatch": getattr(runner, "steps_per_dispatch", lambda m: 1)(cmd["model"]),
        }
      elif cmd["cmd"] == "run":
        out = {"seconds": runner.run(cmd["model"], cmd["steps"])}
      elif cmd["cmd"] == "peak":
        out = {"gflops": runner.matmul_peak()}
      elif cmd["cmd"] == "flops":
        out = {"flops": runner.flops_per_example(cmd["model"])}
      else:
        out = {"peak_rss_mb": _peak_rss_mb()}
    except Exception as e:  # pylint: disable=broad-except  # reported as a skipped row
      out = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    send(out)


class Worker:
  def __init__(self, framework: str, data_path: str, log_path: str):
    args = [
      sys.executable,
      os.path.abspath(__file__),
      f"--worker={framework}",
      f"--data={data_path}",
      f"--batch_size={FLAGS.batch_size}",
      f"--dataset={FLAGS.dataset}",
      f"--steps_per_dispatch={FLAGS.steps_per_dispatch}",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    self.log = open(log_path, "w")
    self.proc = subprocess.Popen(
      args,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self.log,
      text=True,
      env=env,
      cwd=ROOT,
    )
    self.hello = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    return json.loads(line) if line else {"error": f"worker exited; see {self.log.name}"}

  def __call__(self, **cmd) -> dict:
    if self.proc.poll() is not None:
      return {"error": f"worker exited; see {self.log.name}"}
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.close()
      self.proc.wait(timeout=60)
    self.log.close()


# --- The run. ---


def _load() -> float:
  return os.getloadavg()[0]


def _median(v: list[float]) -> float:
  v = sorted(v)
  return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def _prepare_data(out_dir: str) -> str:
  from dlu import data

  ds = data.load(FLAGS.dataset)
  path = os.path.join(out_dir, "train_images.npy")
  import numpy as np

  np.save(path, ds.x_train)
  return path


def run_benchmark(out_dir: str) -> tuple[list[dict], list[str]]:
  notes, rows = [], []
  data_path = _prepare_data(out_dir)
  workers = {}
  for fw in FLAGS.frameworks:
    w = Worker(fw, data_path, os.path.join(out_dir, f"worker_{fw}.log"))
    if "error" in w.hello:
      notes.append(f"{fw}: skipped: {w.hello['error']}")
      w.close()
      continue
    workers[fw] = w
    notes.append(f"{fw}: {w.hello['version']}")
  print("\n".join(notes), flush=True)
  repeats, seconds = (3, 0.5) if FLAGS.quick else (FLAGS.repeats, FLAGS.seconds)
  min_steps = 2 if FLAGS.quick else 3

  steps, results, first, flops, dispatch = {}, {}, {}, {}, {}
  for model in FLAGS.models:
    for fw, w in workers.items():
      r = w(cmd="setup", model=model)
      if "error" in r:
        notes.append(f"{model} / {fw}: skipped: {r['error']}")
        continue
      first[model, fw] = r["first_step_s"]
      # Steps per repetition: about `seconds` long, whole dispatches.
      k = r["steps_per_dispatch"]
      steps[model, fw] = (
        -(-int(min(1000, max(min_steps, seconds / max(r["step_s"], 1e-6)))) // k) * k
      )
      if fw == "dlu":
        dispatch[model] = k
      results[model, fw] = []
      print(
        f"{model:9s} {fw:8s} first step {first[model, fw]:6.2f} s, {steps[model, fw]} steps "
        "per repetition",
        flush=True,
      )
    if "dlu" in workers:
      r = workers["dlu"](cmd="flops", model=model)
      flops[model] = r.get("flops")
  peaks, loads = [], {}
  for rep in range(repeats):
    if "dlu" in workers:
      peaks.append(workers["dlu"](cmd="peak")["gflops"])
    for model in FLAGS.models:
      for fw, w in workers.items():
        if (model, fw) not in results:
          continue
        load = _load()
        r = w(cmd="run", model=model, steps=steps[model, fw])
        eps = steps[model, fw] * FLAGS.batch_size / r["seconds"]
        results[model, fw].append(eps)
        loads.setdefault((model, fw), []).append(load)
        print(
          f"rep {rep + 1}/{repeats} {model:9s} {fw:8s} {eps:9.0f} ex/s  (load {load:.1f})",
          flush=True,
        )
  peak = _median(peaks) if peaks else None
  for (model, fw), eps in results.items():
    row = {
      "model": model,
      "framework": fw,
      "examples_per_s": round(_median(eps), 1),
      "min": round(min(eps), 1),
      "max": round(max(eps), 1),
      "first_step_s": round(first[model, fw], 2),
      "repeats": len(eps),
      "steps_per_repeat": steps[model, fw],
      "load_avg": round(_median(loads[model, fw]), 2),
    }
    if flops.get(model) and peak:
      row["gflops"] = round(row["examples_per_s"] * flops[model] / 1e9, 1)
      row["peak_fraction"] = round(row["gflops"] / peak, 3)
    rows.append(row)
  if peak:
    rows.append(
      {
        "model": "matmul 2048x2048 float32 (jax)",
        "framework": "matmul_peak",
        "gflops": round(peak, 1),
        "min": round(min(peaks), 1),
        "max": round(max(peaks), 1),
      }
    )
  if dispatch:
    notes.append("dlu steps per dispatch: " + ", ".join(f"{m} {k}" for m, k in dispatch.items()))
  for fw, w in workers.items():
    rss = w(cmd="rss").get("peak_rss_mb")
    notes.append(f"{fw} worker peak RSS: {rss:.0f} MB (all its models)")
    w.close()
  os.remove(data_path)
  return rows, notes


def markdown(rows: list[dict], notes: list[str], command: str) -> str:
  by = {(r["model"], r["framework"]): r for r in rows}
  peak = next((r for r in rows if r["framework"] == "matmul_peak"), None)
  models = [m for m in MODELS if any((m, fw) in by for fw in FRAMEWORKS)]
  fmt = lambda r: f"{r['examples_per_s']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f})" if r else "-"
  ratio = lambda m, fw: (
    f"{by[m, 'dlu']['examples_per_s'] / by[m, fw]['examples_per_s']:.2f}x"
    if (m, "dlu") in by and (m, fw) in by
    else "-"
  )
  lines = [
    f"`{command}`",
    "",
    f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
    f"batch {FLAGS.batch_size}, {FLAGS.dataset}, examples/s median (min-max) over repetitions; "
    f"load average during the runs {min(r.get('load_avg', 99) for r in rows if 'load_avg' in r):.1f}"
    f"-{max(r.get('load_avg', 0) for r in rows if 'load_avg' in r):.1f}.",
    "",
    "| model | dlu | PyTorch | Keras | dlu/PyTorch | dlu/Keras | first step s (dlu / PyTorch / Keras) "
    "| dlu GFLOP/s (% of peak) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for m in models:
    d, t, k = by.get((m, "dlu")), by.get((m, "pytorch")), by.get((m, "keras"))
    firsts = " / ".join(f"{r['first_step_s']:.1f}" if r else "-" for r in (d, t, k))
    frac = f"{d['gflops']:.0f} ({100 * d['peak_fraction']:.0f}%)" if d and "gflops" in d else "-"
    lines.append(
      f"| {DESCRIPTIONS[m]} | {fmt(d)} | {fmt(t)} | {fmt(k)} | {ratio(m, 'pytorch')} | "
      f"{ratio(m, 'keras')} | {firsts} | {frac} |"
    )
  if peak:
    lines += [
      "",
      f"Matmul peak measured in the same run: {peak['gflops']:.0f} GFLOP/s "
      f"({peak['min']:.0f}-{peak['max']:.0f}).",
    ]
  lines += [""] + [f"- {n}" for n in notes]
  return "\n".join(lines) + "\n"


def check(args: argparse.Namespace) -> None:
  from dlu.errors import UsageError

  for name, accepted in (("models", MODELS), ("frameworks", FRAMEWORKS)):
    unknown = sorted(set(getattr(args, name)) - set(accepted))
    if unknown or not getattr(args, name):
      raise UsageError(
        f"--{name}: unknown or empty {', '.join(unknown)}; accepted: {', '.join(accepted)}"
      )
  for name in ("repeats", "steps_per_dispatch", "batch_size"):
    if getattr(args, name) < 1:
      raise UsageError(f"--{name} must be a positive integer, got {getattr(args, name)}")


def main(argv: list[str]) -> int:
  FLAGS.__dict__.update(vars(parse_args(argv)))
  if FLAGS.worker:
    _worker_main(FLAGS.worker)
    return 0
  from dlu.errors import UsageError

  try:
    check(FLAGS)
  except UsageError as e:
    print(f"benchmark.py: error: {e}", file=sys.stderr)
    return 2
  out_dir = FLAGS.out or os.path.join("/tmp", f"dlu_benchmark_{os.getpid()}")
  os.makedirs(out_dir, exist_ok=True)
  t0 = time.time()
  rows, notes = run_benchmark(out_dir)
  command = "python scripts/benchmark.py " + " ".join(argv)
  notes.append(f"total time {time.time() - t0:.0f} s")
  md = markdown(rows, notes, command)
  with open(os.path.join(out_dir, "benchmark.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(out_dir, "benchmark.md"), "w") as f:
    f.write(md)
  print("\n" + md + f"\nWritten: {out_dir}/benchmark.json, {out_dir}/benchmark.md", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
