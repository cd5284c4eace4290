r"""Anomaly detection with a run's `score`: the Fashion-MNIST one-class protocol.

  python scripts/anomaly_protocol.py --out=/tmp/anomaly [--methods=ae_mlp,vae,ae_conv,pca]

For each class c: train on the training images of class c only (6,000), score the whole test
split with `dlu.load_run(...).score` (reconstruction error for autoencoders, -ELBO at the
posterior mean for the VAE), and report the AUROC of the other nine classes (anomalies) against
class c. `pca` is the floor: the reconstruction error of a PCA at the same code size. Prints a
table (AUROC per class and the mean over classes) and writes OUT/anomaly.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dlu  # noqa: E402
from dlu import (
  config,  # noqa: E402
  data,
)
from dlu.runtime import cli
from dlu.train import loop  # noqa: E402

flags.DEFINE_string("out", None, "Folder for the per-class data, runs and anomaly.json.")
flags.DEFINE_list("methods", ["ae_mlp", "vae", "pca"], "ae_mlp, vae, ae_conv, pca.")
flags.DEFINE_integer("steps", 1500, "Training steps per class (batch 256: ~64 epochs of 6,000).")
flags.DEFINE_integer("code", 32, "Code size of every method (latent_dim, PCA components).")
FLAGS = flags.FLAGS

CONFIGS = {
  "ae_mlp": dict(model="ae_mlp", widths=["512", "256"], recon_loss="bce"),
  "ae_conv": dict(model="ae_conv", conv_channels=["32", "64"], recon_loss="bce"),
  "vae": dict(model="vae", widths=["512", "256"], likelihood="bernoulli", binarize="none"),
}


def auroc(scores: np.ndarray, y: np.ndarray, c: int) -> float:
  from sklearn.metrics import roc_auc_score

  return float(roc_auc_score(y != c, scores))


def pca_scores(x_train: np.ndarray, x_test: np.ndarray, dim: int) -> np.ndarray:
  from sklearn.decomposition import PCA

  flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255
  pca = PCA(dim, random_state=0).fit(flat(x_train))
  t = flat(x_test)
  return np.mean(np.square(pca.inverse_transform(pca.transform(t)) - t), axis=1)


def main(argv):
  cli.start(argv)
  os.makedirs(FLAGS.out, exist_ok=True)
  ds = data.load("fashion_mnist")
  results = {m: [] for m in FLAGS.methods}
  for c in range(10):
    x_c = ds.x_train[ds.y_train == c]
    path = os.path.join(FLAGS.out, f"class{c}.npz")
    if not os.path.exists(path):
      np.savez(path, x=x_c, x_test=ds.x_test)
    for method in FLAGS.methods:
      t = time.perf_counter()
      if method == "pca":
        scores = pca_scores(x_c, ds.x_test, FLAGS.code)
      else:
        workdir = os.path.join(FLAGS.out, f"{method}_c{c}")
        cfg = config.make_config(
          dataset=f"npz:{path}",
          latent_dim=FLAGS.code,
          batch_size=256,
          num_steps=FLAGS.steps,
          log_every=500,
          eval_every=FLAGS.steps,
          checkpoint_every=FLAGS.steps,
          evaluators=["metrics"],
          steps_per_dispatch=1 if method == "ae_conv" else 10,
          **CONFIGS[method],
        )
        loop.train_and_evaluate(cfg, workdir)
        scores = dlu.load_run(workdir).score(ds.x_test)
      results[method].append(auroc(scores, ds.y_test, c))
      print(
        f"class {c} {method}: AUROC {results[method][-1]:.3f} ({time.perf_counter() - t:.0f} s)",
        flush=True,
      )
  with open(os.path.join(FLAGS.out, "anomaly.json"), "w") as f:
    json.dump(results, f, indent=2)
  print("\n| method | " + " | ".join(str(c) for c in range(10)) + " | mean |")
  print("|---" * 12 + "|")
  for m, v in results.items():
    print(f"| {m} | " + " | ".join(f"{a:.3f}" for a in v) + f" | **{np.mean(v):.3f}** |")


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)
