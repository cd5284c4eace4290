r"""The clustering protocol papers report: every image (train and test) clustered, the mean
and standard deviation of ACC/NMI/ARI over seeds, for autoencoder + clustering, DEC and IDEC.

  python scripts/cluster_protocol.py --root=workdirs/protocol --seeds=0,1,2
  python scripts/cluster_protocol.py --methods=ae,n2d --seeds=0

For each seed: train the autoencoder (--ae_flagfile), evaluate it (ae: k-means on its embeddings;
n2d: UMAP of its embeddings, then a Gaussian mixture, as in N2D), train and evaluate DEC and
IDEC from it. Runs already finished are not redone (training resumes; evaluation is rerun),
so the command can be repeated to fill in what is missing. Pixel/PCA baselines, the probe
and the embedding plot come with the first seed's autoencoder only, and UMAP + GMM on raw
pixels (the floor of n2d) with the first seed's n2d evaluation. Prints a table and writes
ROOT/protocol.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

CONFIGS = {"ae": "experiments/configs/ae_dec_fashion_mnist.flags",
           "dec": "experiments/configs/dec_fashion_mnist.flags",
           "idec": "experiments/configs/idec_fashion_mnist.flags"}
SCORES = ("acc", "nmi", "ari")
#: Evaluations of the autoencoder run itself, by method name.
AE_EVALS = {"ae": [], "n2d": ["--manifold=umap", "--cluster_on=gmm"]}


def run(args: list[str], log: str) -> float:
  """Runs `python -m ...args`, output to `log`; returns the wall time in seconds."""
  t = time.perf_counter()
  with open(log, "a") as f:
    f.write("$ " + " ".join(shlex.quote(a) for a in args) + "\n")
    f.flush()
    done = subprocess.run([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT)
  if done.returncode:
    raise SystemExit(f"failed ({done.returncode}): {' '.join(args)}; see {log}")
  return time.perf_counter() - t


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="workdirs/protocol")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--methods", default="ae,n2d,dec,idec", help="any of ae, n2d, dec, idec")
  parser.add_argument("--ae_flagfile", default=CONFIGS["ae"])
  parser.add_argument("--dec_flagfile", default=CONFIGS["dec"])
  parser.add_argument("--idec_flagfile", default=CONFIGS["idec"])
  parser.add_argument("--skip_baselines", action="store_true",
                      help="no baselines, probe or plot even for the first seed (already measured)")
  parser.add_argument("--train_args", default="", help="extra flags for every training run")
  parser.add_argument("--eval_args", default="", help="extra flags for every evaluation")
  opts = parser.parse_args()
  seeds = [int(s) for s in opts.seeds.split(",")]
  methods = opts.methods.split(",")
  flagfiles = {"ae": opts.ae_flagfile, "dec": opts.dec_flagfile, "idec": opts.idec_flagfile}
  os.makedirs(opts.root, exist_ok=True)
  log = os.path.join(opts.root, "protocol.log")
  train_extra, eval_extra = shlex.split(opts.train_args), shlex.split(opts.eval_args)

  rows: dict[str, list[dict]] = {m: [] for m in methods}
  for seed in seeds:
    ae_dir = os.path.join(opts.root, f"ae_s{seed}")
    train_s = run(["experiments.train", f"--flagfile={flagfiles['ae']}", f"--workdir={ae_dir}",
                   f"--seed={seed}", *train_extra], log)
    for method in methods:
      on_ae = method in AE_EVALS
      workdir = ae_dir if on_ae else os.path.join(opts.root, f"{method}_s{seed}")
      if not on_ae:
        train_s = run(["experiments.train", f"--flagfile={flagfiles[method]}",
                       f"--workdir={workdir}", f"--init_from={ae_dir}", f"--seed={seed}",
                       *train_extra], log)
      first = seed == seeds[0] and not opts.skip_baselines
      if first and method == "ae":
        extra = []
      elif first and method == "n2d":  # Its floor: UMAP and a GMM on raw pixels.
        extra = ["--noprobe", "--embedding_plot=none"]
      else:
        extra = ["--nobaselines", "--noprobe", "--embedding_plot=none"]
      eval_s = run(["experiments.evaluate", f"--workdir={workdir}", "--cluster_split=all",
                    *AE_EVALS.get(method, []), *extra, *eval_extra], log)
      with open(os.path.join(workdir, "eval.json")) as f:
        result = json.load(f)
      result.update(seed=seed, train_wall_s=train_s, eval_wall_s=eval_s)
      rows[method].append(result)
      print(f"{method} seed {seed}: " + " ".join(f"{k}={result[k]:.4f}" for k in SCORES)
            + f" ({result['clustering']}; train {train_s:.0f} s, evaluate {eval_s:.0f} s)",
            flush=True)

  summary = {}
  print(f"\n{'method':<8} {'clustering':<34} " + " ".join(f"{k.upper():>15}" for k in SCORES)
        + f" {'train s':>9} {'eval s':>8}")
  for method, results in rows.items():
    stats = {k: (float(np.mean([r[k] for r in results])), float(np.std([r[k] for r in results])))
             for k in SCORES}
    walls = [float(np.mean([r[w] for r in results])) for w in ("train_wall_s", "eval_wall_s")]
    summary[method] = {"clustering": results[0]["clustering"], "seeds": [r["seed"] for r in results],
                       **{k: {"mean": m, "std": s, "runs": [r[k] for r in results]}
                          for k, (m, s) in stats.items()},
                       "train_wall_s": walls[0], "eval_wall_s": walls[1]}
    print(f"{method:<8} {results[0]['clustering']:<34} "
          + " ".join(f"{m:>8.4f}±{s:.4f}" for m, s in stats.values())
          + f" {walls[0]:>9.0f} {walls[1]:>8.0f}")
  baselines: dict[str, dict] = {}
  for method in (m for m in methods if m in AE_EVALS):
    for name, b in rows[method][0].get("baselines", {}).items():
      baselines.setdefault(name, b)  # ae's come first and carry the probe.
  for name, b in baselines.items():
    print(f"{'baseline':<8} {name:<34} " + " ".join(f"{b[k]:>8.4f}       " for k in SCORES))
  with open(os.path.join(opts.root, "protocol.json"), "w") as f:
    json.dump({"seeds": seeds, "methods": summary, "baselines": baselines or None,
               "num_clustered": rows[methods[0]][0]["num_clustered"]}, f, indent=2)


if __name__ == "__main__":
  main()
