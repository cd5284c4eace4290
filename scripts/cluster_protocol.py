r"""The clustering protocol papers report: every image (train and test) clustered, the mean
and standard deviation of ACC/NMI/ARI over seeds, for autoencoder + clustering, DEC, IDEC
SimCLR representations and contrastive clustering (SimCLR with a cluster head).

  python scripts/cluster_protocol.py --root=workdirs/protocol --seeds=0,1,2
  python scripts/cluster_protocol.py --methods=simclr,simclr_umap --seeds=0,1,2

For each seed, each method evaluates one run, trained first if it is not there yet:
  ae           k-means on the autoencoder's embeddings (--ae_flagfile)
  n2d          UMAP of the same embeddings, then a Gaussian mixture, as in N2D
  dec, idec    their clustering layers, trained from that autoencoder (--init_from)
  simclr       k-means on SimCLR's representation (--simclr_flagfile)
  simclr_umap  UMAP of the same representation, then a Gaussian mixture
  simclr_umap_kmeans  the same UMAP, then k-means
  cc           the cluster head of a SimCLR run with --cluster_head (--cc_flagfile)
Runs already finished are not redone (training resumes; evaluation is rerun), so the command
can be repeated to fill in what is missing. Pixel/PCA baselines, the probes and the embedding
plot come with the first seed's autoencoder only, and UMAP + GMM on raw pixels (the floor of
n2d and simclr_umap) with the first of those evaluated; simclr's and cc's first seeds add their
probes and plots. Prints a table and writes ROOT/protocol.json.
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

CONFIGS = {
  "ae": "experiments/configs/ae_dec_fashion_mnist.flags",
  "dec": "experiments/configs/dec_fashion_mnist.flags",
  "idec": "experiments/configs/idec_fashion_mnist.flags",
  "simclr": "experiments/configs/simclr_fashion_mnist.flags",
  "cc": "experiments/configs/cc_fashion_mnist.flags",
}
SCORES = ("acc", "nmi", "ari")
UMAP_GMM = ["--manifold=umap", "--cluster_on=gmm"]
#: The run each method evaluates, and how.
RUN = {
  "ae": "ae",
  "n2d": "ae",
  "dec": "dec",
  "idec": "idec",
  "simclr": "simclr",
  "simclr_umap": "simclr",
  "simclr_umap_kmeans": "simclr",
  "cc": "cc",
}
EVAL_ARGS = {
  "n2d": UMAP_GMM,
  "simclr_umap": UMAP_GMM,
  "simclr_umap_kmeans": ["--manifold=umap", "--cluster_on=kmeans"],
}
#: Runs trained from another run's checkpoint.
INIT_FROM = {"dec": "ae", "idec": "ae"}
#: Methods scored by the run's own clustering layer; their evaluation's baseline is k-means
#: on that run's embeddings, kept with the method rather than among the data's baselines.
HEADS = ("dec", "idec", "cc")


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
  parser.add_argument("--methods", default="ae,n2d,dec,idec", help=f"any of {', '.join(RUN)}")
  parser.add_argument("--ae_flagfile", default=CONFIGS["ae"])
  parser.add_argument("--dec_flagfile", default=CONFIGS["dec"])
  parser.add_argument("--idec_flagfile", default=CONFIGS["idec"])
  parser.add_argument("--simclr_flagfile", default=CONFIGS["simclr"])
  parser.add_argument("--cc_flagfile", default=CONFIGS["cc"])
  parser.add_argument(
    "--skip_baselines",
    action="store_true",
    help="no baselines, probe or plot even for the first seed (already measured)",
  )
  parser.add_argument("--train_args", default="", help="extra flags for every training run")
  parser.add_argument("--eval_args", default="", help="extra flags for every evaluation")
  opts = parser.parse_args()
  seeds = [int(s) for s in opts.seeds.split(",")]
  methods = opts.methods.split(",")
  unknown = sorted(set(methods) - set(RUN))
  if unknown:
    parser.error(f"--methods: unknown {', '.join(unknown)}; accepted: {', '.join(RUN)}")
  flagfiles = {run: getattr(opts, f"{run}_flagfile") for run in CONFIGS}
  os.makedirs(opts.root, exist_ok=True)
  log = os.path.join(opts.root, "protocol.log")
  train_extra, eval_extra = shlex.split(opts.train_args), shlex.split(opts.eval_args)

  rows: dict[str, list[dict]] = {m: [] for m in methods}
  pixel_floor = True  # UMAP + GMM on raw pixels, with the first UMAP evaluation.
  for seed in seeds:
    train_s: dict[str, float] = {}

    def trained(name: str) -> str:
      """The workdir of this seed's run `name`, trained (or resumed) once per seed."""
      workdir = os.path.join(opts.root, f"{name}_s{seed}")
      if name not in train_s:
        init = [f"--init_from={trained(INIT_FROM[name])}"] if name in INIT_FROM else []
        train_s[name] = run(
          [
            "experiments.train",
            f"--flagfile={flagfiles[name]}",
            f"--workdir={workdir}",
            *init,
            f"--seed={seed}",
            *train_extra,
          ],
          log,
        )
      return workdir

    for method in methods:
      workdir = trained(RUN[method])
      first = seed == seeds[0] and not opts.skip_baselines
      if first and method == "ae":
        extra = []
      elif first and method in ("simclr", "cc"):  # Probe and plot; pixel baselines come with ae.
        extra = ["--nobaselines"]
      elif first and pixel_floor and method in EVAL_ARGS:
        extra, pixel_floor = ["--noprobe", "--embedding_plot=none"], False
      else:
        extra = ["--nobaselines", "--noprobe", "--embedding_plot=none"]
      eval_s = run(
        [
          "experiments.evaluate",
          f"--workdir={workdir}",
          "--cluster_split=all",
          *EVAL_ARGS.get(method, []),
          *extra,
          *eval_extra,
        ],
        log,
      )
      with open(os.path.join(workdir, "eval.json")) as f:
        result = json.load(f)
      result.update(seed=seed, train_wall_s=train_s[RUN[method]], eval_wall_s=eval_s)
      rows[method].append(result)
      print(
        f"{method} seed {seed}: "
        + " ".join(f"{k}={result[k]:.4f}" for k in SCORES)
        + f" ({result['clustering']}; train {train_s[RUN[method]]:.0f} s, "
        f"evaluate {eval_s:.0f} s)",
        flush=True,
      )

  summary = {}
  print(
    f"\n{'method':<18} {'clustering':<34} "
    + " ".join(f"{k.upper():>15}" for k in SCORES)
    + f" {'train s':>9} {'eval s':>8}"
  )
  for method, results in rows.items():
    stats = {
      k: (float(np.mean([r[k] for r in results])), float(np.std([r[k] for r in results])))
      for k in SCORES
    }
    walls = [float(np.mean([r[w] for r in results])) for w in ("train_wall_s", "eval_wall_s")]
    summary[method] = {
      "clustering": results[0]["clustering"],
      "seeds": [r["seed"] for r in results],
      **{k: {"mean": m, "std": s, "runs": [r[k] for r in results]} for k, (m, s) in stats.items()},
      "train_wall_s": walls[0],
      "eval_wall_s": walls[1],
    }
    # The first seed's, where measured (--eval_args=--purity_clusters=N for the last).
    for probe in ("linear_probe_acc", "knn_probe_acc", "overcluster_purity"):
      if probe in results[0]:
        summary[method][probe] = results[0][probe]
    if method in HEADS and "baselines" in results[0]:  # k-means on its embeddings, first seed.
      summary[method]["baselines"] = results[0]["baselines"]
    print(
      f"{method:<18} {results[0]['clustering']:<34} "
      + " ".join(f"{m:>8.4f}±{s:.4f}" for m, s in stats.values())
      + f" {walls[0]:>9.0f} {walls[1]:>8.0f}"
    )
  baselines: dict[str, dict] = {}
  for method in (m for m in methods if m not in HEADS):
    for name, b in rows[method][0].get("baselines", {}).items():
      baselines.setdefault(name, b)  # ae's come first and carry the probe.
  for name, b in baselines.items():
    print(f"{'baseline':<18} {name:<34} " + " ".join(f"{b[k]:>8.4f}       " for k in SCORES))
  with open(os.path.join(opts.root, "protocol.json"), "w") as f:
    json.dump(
      {
        "seeds": seeds,
        "methods": summary,
        "baselines": baselines or None,
        "num_clustered": rows[methods[0]][0]["num_clustered"],
      },
      f,
      indent=2,
    )


if __name__ == "__main__":
  main()
