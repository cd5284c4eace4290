r"""Anomaly detection with a run's `score`: the Fashion-MNIST one-class protocol.

  python scripts/anomaly_protocol.py --out=/tmp/anomaly [--methods=ae_mlp,vae,svdd_mlp,pca,knn]
  python scripts/anomaly_protocol.py --out=/tmp/anomaly_quick --quick   # 2 classes, 100 steps

For each class c: train on the training images of class c only (6,000), score the whole test
split with `dlu.load_run(...).score` (reconstruction error for autoencoders, -ELBO at the
posterior mean for the VAE, ||z - c||^2 for deep SVDD, minus the mean log-probability of the
right transformation for GEOM), and report the AUROC of the other nine
classes (anomalies) against class c. A method `MODEL+knn` or `MODEL+cosine` scores the run of
MODEL by `Run.score(method=...)` in its code space instead. The shallow detectors fit
scikit-learn on the same class's pixels (in [0, 1]): `pca` (reconstruction error at the same
code size), `knn` (mean distance to the 5 nearest training images), `iforest`
(IsolationForest), `lof` (LocalOutlierFactor, novelty=True). Prints the per-class AUROC table
as markdown (and the mean over classes) and writes OUT/anomaly.json.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dlu  # noqa: E402
from dlu import (  # noqa: E402
  config,
  data,
  files,
)
from dlu.runtime import cli
from dlu.train import loop  # noqa: E402

flags.DEFINE_string("out", None, "Folder for the per-class data, runs and anomaly.json.")
flags.DEFINE_list(
  "methods",
  ["ae_mlp", "vae", "svdd_mlp", "ae_mlp+knn", "pca", "knn", "iforest", "lof"],
  "dlu models (ae_mlp, vae, ae_conv, svdd_mlp, geom_conv), MODEL+knn or MODEL+cosine (the run of MODEL "
  "scored in its code space), and shallow detectors (pca, knn, iforest, lof).",
)
flags.DEFINE_integer("steps", 1500, "Training steps per class (batch 256: ~64 epochs of 6,000).")
flags.DEFINE_list("classes", [str(c) for c in range(10)], "The normal classes, one run each.")
flags.DEFINE_bool(
  "quick",
  False,
  "A smoke run: the first two --classes, 100 steps, shallow detectors on 2,000 training images.",
)
flags.DEFINE_integer("code", 32, "Code size of every method (latent_dim, PCA components).")
FLAGS = flags.FLAGS

CONFIGS = {
  "ae_mlp": dict(model="ae_mlp", widths=["512", "256"], recon_loss="bce"),
  "ae_conv": dict(model="ae_conv", conv_channels=["32", "64"], recon_loss="bce"),
  "vae": dict(model="vae", widths=["512", "256"], likelihood="bernoulli", binarize="none"),
  "svdd_mlp": dict(model="svdd_mlp", widths=["512", "256"], optimizer="adam", learning_rate=1e-4),
  # Every image under its 8 transformations: a batch of 64 is 512 views.
  "geom_conv": dict(model="geom_conv", conv_channels=["32", "64"], batch_size=64),
}
SHALLOW = ("pca", "knn", "iforest", "lof")


def auroc(scores: np.ndarray, y: np.ndarray, c: int) -> float:
  from sklearn.metrics import roc_auc_score

  return float(roc_auc_score(y != c, scores))


def flat(x: np.ndarray) -> np.ndarray:
  return x.reshape(len(x), -1).astype(np.float32) / 255


def shallow_scores(method: str, x_train: np.ndarray, x_test: np.ndarray, dim: int) -> np.ndarray:
  """A scikit-learn detector fitted on `x_train`'s pixels; higher: more anomalous. [N]"""
  from sklearn.decomposition import PCA
  from sklearn.ensemble import IsolationForest
  from sklearn.neighbors import LocalOutlierFactor

  from dlu.metrics import novelty

  train, test = flat(x_train), flat(x_test)
  if method == "pca":
    pca = PCA(dim, random_state=0).fit(train)
    return np.mean(np.square(pca.inverse_transform(pca.transform(test)) - test), axis=1)
  if method == "knn":
    return novelty.knn_distance(train, test, k=5)
  if method == "iforest":
    return -IsolationForest(random_state=0).fit(train).score_samples(test)
  return -LocalOutlierFactor(novelty=True).fit(train).score_samples(test)


def train_run(model: str, path: str, workdir: str, steps: int) -> None:
  common = dict(
    dataset=f"npz:{path}",
    latent_dim=FLAGS.code,
    batch_size=256,
    num_steps=steps,
    log_every=min(500, steps),
    eval_every=steps,
    checkpoint_every=steps,
    evaluators=["metrics"],
    steps_per_dispatch=1 if model in ("ae_conv", "geom_conv") else 10,
  )
  cfg = config.make_config(**{**common, **CONFIGS[model]})
  loop.train_and_evaluate(cfg, workdir)


def table(results: dict[str, dict[int, float]], classes: list[int]) -> str:
  """The per-class AUROC table (and the mean over classes) as markdown."""
  lines = [
    "| method | " + " | ".join(str(c) for c in classes) + " | mean |",
    "|---" * (len(classes) + 2) + "|",
  ]
  for m, v in results.items():
    row = [v[c] for c in classes]
    lines.append(f"| {m} | " + " | ".join(f"{a:.3f}" for a in row) + f" | **{np.mean(row):.3f}** |")
  return "\n".join(lines)


def main(argv):
  cli.start(argv)
  for method in FLAGS.methods:
    base = method.partition("+")[0]
    if method not in SHALLOW and base not in CONFIGS:
      raise dlu.UsageError(f"--methods: {method!r} is none of {', '.join((*CONFIGS, *SHALLOW))}")
    if "+" in method and method.partition("+")[2] not in ("knn", "cosine"):
      raise dlu.UsageError(f"--methods: {method!r}: expected MODEL+knn or MODEL+cosine")
  classes = [int(c) for c in FLAGS.classes][: 2 if FLAGS.quick else None]
  steps = 100 if FLAGS.quick else FLAGS.steps
  os.makedirs(FLAGS.out, exist_ok=True)
  ds = data.load("fashion_mnist")
  results = {m: {} for m in FLAGS.methods}
  for c in classes:
    x_c = ds.x_train[ds.y_train == c]
    path = os.path.join(FLAGS.out, f"class{c}.npz")
    if not os.path.exists(path):
      files.atomic_save(path, lambda tmp: np.savez(tmp, x=x_c, x_test=ds.x_test), suffix=".npz")
    for method in FLAGS.methods:
      t = time.perf_counter()
      if method in SHALLOW:
        fit = x_c[:2000] if FLAGS.quick else x_c
        scores = shallow_scores(method, fit, ds.x_test, FLAGS.code)
      else:
        model, _, how = method.partition("+")
        workdir = os.path.join(FLAGS.out, f"{model}_c{c}")
        train_run(model, path, workdir, steps)  # a finished run resumes at its last step
        scores = dlu.load_run(workdir).score(ds.x_test, method=how or "model")
      results[method][c] = auroc(scores, ds.y_test, c)
      print(
        f"class {c} {method}: AUROC {results[method][c]:.3f} ({time.perf_counter() - t:.0f} s)",
        flush=True,
      )
  files.write_json(os.path.join(FLAGS.out, "anomaly.json"), results)
  print("\n" + table(results, classes))


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)
