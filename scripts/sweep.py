r"""Run every combination of a flag grid, then tabulate and plot the results.

  python scripts/sweep.py --flagfile=experiments/configs/ae_digits.flags \
      --grid 'learning_rate=1e-3,3e-3' --grid 'hidden_units=16,64' --grid 'seed=0,1,2' \
      --workdir_root=sweeps/ae_digits [--parallel 2] [--dry_run] [--metric mse] [-- --num_steps=500]

Each combination trains in `WORKDIR_ROOT/<flag=value,...>`; finished runs are skipped, so
rerunning a sweep resumes it (unfinished runs resume from their own checkpoints).
`--dry_run` prints one command per run, for a cluster's job array. Flags after `--` go to
every run. Results go to `WORKDIR_ROOT/results.csv` (each run's last validation row as
`valid/NAME`, its test row as `test/NAME`) and `WORKDIR_ROOT/valid_<metric>_vs_<flag>.png`
(mean and standard deviation over seeds when `seed` is swept).

The sweep chooses on the validation split, never on the test split: the combination of
flags with the best mean validation `--metric` (over seeds) is printed with its mean test
value beside it, and kept in `WORKDIR_ROOT/selection.json`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import itertools
import json
import os
import shlex
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dlu import files  # noqa: E402
from dlu.metrics import higher_is_better  # noqa: E402  (no JAX)


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
  grid: dict[str, list[str]] = {}
  for spec in specs:
    name, sep, values = spec.partition("=")
    name = name.strip().lstrip("-")
    choices = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not name or not choices:
      raise SystemExit(f"error: --grid {spec!r}: expected NAME=V1,V2,...")
    if name in grid:
      raise SystemExit(f"error: --grid names {name} twice")
    grid[name] = choices
  return grid


def runs(grid: dict[str, list[str]]) -> list[dict[str, str]]:
  names = list(grid)
  return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def run_name(run: dict[str, str]) -> str:
  return ",".join(f"{k}={v}" for k, v in run.items()).replace("/", "_")


def command(flagfile: str, workdir: str, run: dict[str, str], extra: list[str]) -> list[str]:
  return [
    sys.executable,
    "-m",
    "experiments.train",
    f"--flagfile={os.path.abspath(flagfile)}",
    *extra,
    *(f"--{k}={v}" for k, v in run.items()),
    f"--workdir={os.path.abspath(workdir)}",
  ]


def read_rows(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def recorded_num_steps(workdir: str) -> int | None:
  try:
    with open(os.path.join(workdir, "flags.txt")) as f:
      for line in f:
        if line.startswith("--num_steps="):
          return int(line.split("=", 1)[1])
  except OSError:
    pass
  return None


def final_eval(workdir: str) -> dict[str, Any] | None:
  """{"valid": the last validation row, "test": the test row} of a finished run (the test
  split is scored once, when a run ends: at --num_steps or by early stopping), else None."""
  rows = read_rows(workdir)
  tests = [r for r in rows if r.get("split") == "test"]
  valid = [r for r in rows if r.get("split") == "valid"]
  if recorded_num_steps(workdir) is None or not tests or not valid:
    return None
  if valid[-1]["step"] != tests[-1]["step"]:
    return None
  return {"valid": valid[-1], "test": tests[-1]}


def train(cmd: list[str], log_path: str) -> int:
  with open(log_path, "a") as log:
    return subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode


def write_results(
  root: str, grid: dict[str, list[str]], all_runs: list[dict[str, str]]
) -> list[dict]:
  table = []
  for run in all_runs:
    workdir = os.path.join(root, run_name(run))
    final = final_eval(workdir)
    train_rows = [r for r in read_rows(workdir) if r.get("split") == "train"]
    row: dict[str, Any] = {"run": run_name(run), **run, "finished": final is not None}
    if final is not None:
      row["step"] = final["test"]["step"]
      for split in ("valid", "test"):
        row.update(
          {f"{split}/{k}": v for k, v in final[split].items() if k not in ("step", "split")}
        )
    if train_rows:
      row["train_loss"] = train_rows[-1].get("loss")
    table.append(row)
  columns = ["run", *grid, "finished", "step"]
  columns += sorted({k for row in table for k in row} - set(columns))
  path = os.path.join(root, "results.csv")
  with files.atomic_write(path, newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
  return table


def _number(value: str) -> float | None:
  try:
    return float(value)
  except ValueError:
    return None


def choose(table: list[dict], grid: dict[str, list[str]], metric: str) -> dict[str, Any] | None:
  """The combination of swept flags (seeds averaged) with the best mean `valid/metric`, and
  its mean `test/metric` beside it: chosen on validation only, whatever the test numbers."""
  others = [k for k in grid if k != "seed"]
  higher = higher_is_better(metric)
  best = None
  for combo in itertools.product(*(grid[k] for k in others)):
    runs_ = [
      r
      for r in table
      if r.get(f"valid/{metric}") is not None and all(r.get(k) == v for k, v in zip(others, combo))
    ]
    if not runs_:
      continue
    valid = sum(float(r[f"valid/{metric}"]) for r in runs_) / len(runs_)
    if best is None or (valid > best["valid"] if higher else valid < best["valid"]):
      tests = [float(r[f"test/{metric}"]) for r in runs_ if r.get(f"test/{metric}") is not None]
      best = {
        "flags": dict(zip(others, combo)),
        "metric": metric,
        "valid": valid,
        "test": sum(tests) / len(tests) if tests else None,
        "runs": [r["run"] for r in runs_],
      }
  return best


def plot(root: str, table: list[dict], grid: dict[str, list[str]], metric: str, x_flag: str) -> str:
  """Validation `metric` against `x_flag`, one line per combination of the other flags, seeds
  averaged."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  column = f"valid/{metric}"
  others = [k for k in grid if k not in (x_flag, "seed")]
  xs = grid[x_flag]
  numeric = all(_number(x) is not None for x in xs)
  fig, ax = plt.subplots(figsize=(6, 4))
  for combo in itertools.product(*(grid[k] for k in others)):
    label = ", ".join(f"{k}={v}" for k, v in zip(others, combo)) or metric
    means, stds, positions = [], [], []
    for i, x in enumerate(xs):
      values = [
        r[column]
        for r in table
        if r.get(x_flag) == x
        and r.get(column) is not None
        and all(r.get(k) == v for k, v in zip(others, combo))
      ]
      if values:
        positions.append(_number(x) if numeric else i)
        means.append(float(np.mean(values)))
        stds.append(float(np.std(values)))
    if positions:
      ax.errorbar(positions, means, yerr=stds, marker="o", capsize=3, label=label)
  if numeric:
    values = [_number(x) for x in xs]
    if min(values) > 0 and max(values) / min(values) >= 3:
      ax.set_xscale("log")
  else:
    ax.set_xticks(range(len(xs)), xs)
  ax.set_xlabel(x_flag)
  ax.set_ylabel(
    f"validation {metric}"
    + (" (mean ± std over seeds)" if "seed" in grid and x_flag != "seed" else "")
  )
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(root, f"valid_{metric}_vs_{x_flag}.png")
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  extra: list[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1 :]
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--flagfile", required=True, help="The experiment every run starts from.")
  parser.add_argument("--grid", action="append", default=[], help="NAME=V1,V2,... (repeatable).")
  parser.add_argument("--workdir_root", required=True, help="One workdir per run goes here.")
  parser.add_argument("--parallel", type=int, default=1, help="Runs at a time on this machine.")
  parser.add_argument("--dry_run", action="store_true", help="Print the commands; run nothing.")
  parser.add_argument(
    "--metric",
    default=None,
    help="Validation metric to choose on and plot (default: the first).",
  )
  parser.add_argument("--x_flag", default=None, help="Swept flag on the x axis (default: first).")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.flagfile):
    raise SystemExit(f"error: --flagfile={args.flagfile} does not exist")
  if not args.grid:
    raise SystemExit("error: give at least one --grid NAME=V1,V2,...")
  if args.parallel < 1:
    raise SystemExit(f"error: --parallel must be >= 1, got {args.parallel}")
  grid = parse_grid(args.grid)
  x_flag = args.x_flag or next(iter(grid))
  if x_flag not in grid:
    raise SystemExit(f"error: --x_flag={x_flag} is not a swept flag ({', '.join(grid)})")
  all_runs = runs(grid)
  root = args.workdir_root
  commands = {
    run_name(r): command(args.flagfile, os.path.join(root, run_name(r)), r, extra) for r in all_runs
  }
  if args.dry_run:
    for cmd in commands.values():
      print(shlex.join(cmd))
    return 0

  os.makedirs(os.path.join(root, "logs"), exist_ok=True)
  todo = [name for name in commands if final_eval(os.path.join(root, name)) is None]
  print(
    f"{len(all_runs)} runs, {len(all_runs) - len(todo)} finished, {len(todo)} to run "
    f"({args.parallel} at a time)",
    flush=True,
  )
  failed = []
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    futures = {
      pool.submit(train, commands[n], os.path.join(root, "logs", f"{n}.log")): n for n in todo
    }
    for future in concurrent.futures.as_completed(futures):
      name = futures[future]
      code = future.result()
      print(f"{'done' if code == 0 else f'FAILED ({code})'}: {name}", flush=True)
      if code != 0:
        failed.append(name)

  table = write_results(root, grid, all_runs)
  metrics = [k.split("/", 1)[1] for row in table for k in row if k.startswith("valid/")]
  metric = args.metric or (metrics[0] if metrics else None)
  print(f"Results: {os.path.join(root, 'results.csv')}")
  if metric is not None and any(row.get(f"valid/{metric}") is not None for row in table):
    print(f"Plot:    {plot(root, table, grid, metric, x_flag)}")
    chosen = choose(table, grid, metric)
    with open(os.path.join(root, "selection.json"), "w") as f:
      json.dump(chosen, f, indent=2)
    test = "n/a" if chosen["test"] is None else f"{chosen['test']:.6g}"
    print(
      f"Chosen on validation {metric}: "
      f"{','.join(f'{k}={v}' for k, v in chosen['flags'].items()) or 'the only combination'}: "
      f"valid {metric} {chosen['valid']:.6g}, test {metric} {test} "
      f"(mean of {len(chosen['runs'])} run(s))"
    )
  if failed:
    print(f"{len(failed)} run(s) failed; see {os.path.join(root, 'logs')}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
