r"""Clustering tables: dlu's table methods beside k-means and GMM on the standardised features.

  python scripts/table_clustering.py --out=/tmp/tables [--seeds=0,1,2] [--fashion_mnist]

Writes scikit-learn's bundled tables (wine 178 x 13, breast cancer 569 x 30, and 8x8 digits read
as 1,797 rows of 64 columns) as CSVs with a `label` column (with --fashion_mnist also the 70,000 x
784 Fashion-MNIST table), and for each seed trains from them, all through the real entry points'
library calls (labels only score):
  ae_kmeans  an MLP autoencoder (`ae_mlp`), then k-means on its codes (experiments.evaluate);
  idec       IDEC started from that autoencoder;
  cc         SimCLR with SCARF views and the contrastive cluster head (`simclr_mlp --cluster_head`).
Every row of the table is clustered (train and test). Prints a table of ACC/NMI/ARI, mean and std
over the seeds, and writes OUT/table_clustering.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dlu import config  # noqa: E402
from dlu.metrics import clustering
from dlu.runtime import cli
from dlu.train import evaluate, loop  # noqa: E402

flags.DEFINE_string("out", None, "Folder for the tables, the runs and table_clustering.json.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each trains every method anew).")
flags.DEFINE_list("methods", ["ae_kmeans", "idec", "cc"], "Methods to run.")
flags.DEFINE_list("tables", ["wine", "breast_cancer", "digits64"], "Tables to cluster.")
flags.DEFINE_boolean("fashion_mnist", False, "Also Fashion-MNIST as a 70,000 x 784 table.")
FLAGS = flags.FLAGS

SCORES = ("acc", "nmi", "ari")


def _write_csv(path: str, x: np.ndarray, y: np.ndarray) -> None:
  if os.path.exists(path):
    return
  header = ",".join([f"c{i}" for i in range(x.shape[1])] + ["label"])
  np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6g")


def tables(out: str) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
  """name -> (csv path, features, labels)."""
  from sklearn import datasets

  found = {}
  for name in FLAGS.tables:
    loader = {
      "wine": datasets.load_wine,
      "breast_cancer": datasets.load_breast_cancer,
      "digits64": datasets.load_digits,
    }[name]
    d = loader()
    found[name] = (d.data.astype(np.float64), d.target.astype(np.int64))
  if FLAGS.fashion_mnist:
    from dlu import data

    ds = data.load("fashion_mnist")
    x = np.concatenate([ds.x_train, ds.x_test]).reshape(70000, -1)
    found["fashion_mnist"] = (x.astype(np.float64), np.concatenate([ds.y_train, ds.y_test]))
  result = {}
  for name, (x, y) in found.items():
    path = os.path.join(out, f"{name}.csv")
    _write_csv(path, x, y)
    result[name] = (path, x, y)
  return result


def _settings(name: str, n: int, k: int) -> dict:
  """Sizes that suit the table: small tables get small batches and networks."""
  big = n > 10000
  return dict(
    batch_size=256 if big else (64 if n < 1000 else 128),
    widths=["500", "500", "2000"] if big else (["64", "32"] if n < 1000 else ["256", "128"]),
    latent_dim=10 if big else max(4, 2 * k),
    steps=6000 if big else 2000,
    # Pixel tables have constant (always blank) columns, which standard scaling refuses.
    feature_scaling="minmax" if name in ("digits64", "fashion_mnist") else "standard",
  )


def run_method(method: str, name: str, csv: str, k: int, seed: int, workdir: str, n: int) -> dict:
  s = _settings(name, n, k)
  common = dict(
    dataset=f"csv:{csv}",
    label_column="label",
    seed=seed,
    batch_size=s["batch_size"],
    log_every=500,
    checkpoint_every=s["steps"],
    eval_every=s["steps"],
    eval_batch_size=1024,
    steps_per_dispatch=10,
    evaluators=["metrics"],
    feature_scaling=s["feature_scaling"],
  )
  ae_dir = os.path.join(workdir, f"ae_s{seed}")
  if method in ("ae_kmeans", "idec") and not os.path.exists(os.path.join(ae_dir, "eval.json")):
    cfg = config.make_config(
      model="ae_mlp", widths=s["widths"], latent_dim=s["latent_dim"], num_steps=s["steps"], **common
    )
    loop.train_and_evaluate(cfg, ae_dir)
    evaluate.evaluate_workdir(ae_dir, probe=False, baselines=False, embedding_plot="none")
  if method == "ae_kmeans":
    return json.load(open(os.path.join(ae_dir, "eval.json")))
  if method == "idec":
    run_dir = os.path.join(workdir, f"idec_s{seed}")
    cfg = config.config_from_flagfile(
      os.path.join(ae_dir, "flags.txt"),
      model="idec",
      init_from=ae_dir,
      num_steps=s["steps"] // 2,
      eval_every=s["steps"] // 2,
      checkpoint_every=s["steps"] // 2,
      target_update_every=50,
      gamma=0.1,
      learning_rate=1e-4,
      steps_per_dispatch=10,
    )
  else:
    run_dir = os.path.join(workdir, f"cc_s{seed}")
    cfg = config.make_config(
      model="simclr_mlp",
      widths=[str(2 * int(s["widths"][0]))],
      latent_dim=32,
      projection_dims=["64", "32"],
      cluster_head=True,
      corruption_rate=0.6,
      temperature=0.5,
      num_steps=s["steps"],
      learning_rate=1e-3,
      **common,
    )
  if os.path.exists(os.path.join(run_dir, "eval.json")):  # done by an earlier call
    return json.load(open(os.path.join(run_dir, "eval.json")))
  loop.train_and_evaluate(cfg, run_dir)
  return evaluate.evaluate_workdir(run_dir, probe=False, baselines=False, embedding_plot="none")


def baselines(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> dict[str, dict]:
  """k-means and a GMM on the standardised features. Above 100 columns the GMM's covariances are
  diagonal: a full covariance of 784 pixel columns costs hours here and is singular on the blank
  ones."""
  z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
  covariance = "full" if x.shape[1] <= 100 else "diag"
  return {
    "kmeans": clustering.scores(y, clustering.kmeans(z, k, seed=seed, n_init=10)[0]),
    "gmm": clustering.scores(y, clustering.gmm(z, k, seed=seed, covariance_type=covariance)),
  }


def main(argv):
  cli.start(argv)
  os.makedirs(FLAGS.out, exist_ok=True)
  seeds = [int(s) for s in FLAGS.seeds]
  results: dict = {}
  for name, (csv, x, y) in tables(FLAGS.out).items():
    k = len(np.unique(y))
    per = {m: {s: [] for s in SCORES} for m in ["kmeans", "gmm", *FLAGS.methods]}
    for seed in seeds:
      for m, sc in baselines(x, y, k, seed).items():
        for s in SCORES:
          per[m][s].append(sc[s])
      for method in FLAGS.methods:
        t = time.perf_counter()
        out = run_method(method, name, csv, k, seed, os.path.join(FLAGS.out, name), len(x))
        for s in SCORES:
          per[method][s].append(out[s])
        print(
          f"{name} seed {seed} {method}: acc {out['acc']:.3f} nmi {out['nmi']:.3f} "
          f"ari {out['ari']:.3f} ({time.perf_counter() - t:.0f} s)",
          flush=True,
        )
    results[name] = {
      m: {
        s: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v} for s, v in d.items()
      }
      for m, d in per.items()
    }
  with open(os.path.join(FLAGS.out, "table_clustering.json"), "w") as f:
    json.dump(results, f, indent=2)
  print("\n| table | method | ACC | NMI | ARI |\n|---|---|---|---|---|")
  for name, d in results.items():
    for m, r in d.items():
      cells = " | ".join(f"{r[s]['mean']:.3f} ± {r[s]['std']:.3f}" for s in SCORES)
      print(f"| {name} | {m} | {cells} |")


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)
