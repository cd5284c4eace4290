"""Imbalanced training data, and what rebalancing it is worth to a classifier.

    exp, state = imbalance.load_imbalanced_gan("workdirs/cdcgan_lt100")
    results = imbalance.measure(exp, state, seeds=3, steps=500, batch_size=128, learning_rate=1e-3)

The run in the workdir is a class-conditional GAN trained on an imbalanced subset of the
training split (`--class_balance`), never on the balanced one. `measure` trains the feature
network's architecture (dlu.metrics.feature_net.Classifier) on that same subset four ways: as it is
(`imbalanced`), with each class's loss weighted by n / (K n_c) (`class_weighted`), with the
minority classes randomly oversampled up to the largest class (`oversampled`), and with them
filled up to the largest class by the GAN's samples of that class (`gan_filled`). Each is
scored on the real, balanced test split (accuracy, balanced accuracy, the worst class's
recall), over several seeds, every classifier with the same number of steps. It also
measures the GAN's own per-class sample quality: the FID of each class's samples against the
test images of that class, beside the class's share of the training subset.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from sklearn import metrics as sk_metrics
from sklearn.utils.class_weight import compute_class_weight

from dlu import config, data, files
from dlu.errors import UsageError
from dlu.metrics import feature_net, sample_quality
from dlu.studies import few_shot
from dlu.train.experiment import Experiment

METHODS = ("imbalanced", "class_weighted", "oversampled", "gan_filled")


def load_imbalanced_gan(workdir: str) -> tuple[Experiment, Any]:
  """A class-conditional GAN run trained on an imbalanced split (`--class_balance`), and its
  checkpointed state; UsageError otherwise."""
  flagfile = os.path.join(workdir or "", "flags.txt")
  if os.path.isfile(flagfile) and not config.config_from_flagfile(flagfile).class_balance:
    raise UsageError(
      f"--workdir={workdir} was trained on the whole training split; the comparison needs a "
      "conditional GAN trained on the imbalanced split itself (train it with --class_balance)"
    )
  return few_shot.load_conditional_gan(workdir)


def scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
  """Accuracy, balanced accuracy (mean recall over classes) and the worst class's recall."""
  recall = sk_metrics.recall_score(
    y_true, y_pred, labels=np.arange(num_classes), average=None, zero_division=0
  )
  return {
    "accuracy": float(sk_metrics.accuracy_score(y_true, y_pred)),
    "balanced_accuracy": float(sk_metrics.balanced_accuracy_score(y_true, y_pred)),
    "worst_class_recall": float(recall.min()),
  }


def oversample(y: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
  """Rows of `y` with each class drawn with replacement up to the largest class's count
  (every row of a class kept once, the rest drawn at random). [K * n_max]"""
  rng = np.random.default_rng([seed, 2])
  n_max = int(np.bincount(y, minlength=num_classes).max())
  rows = []
  for c in range(num_classes):
    own = np.flatnonzero(y == c)
    rows += [own, rng.choice(own, n_max - len(own), replace=True)]
  return np.sort(np.concatenate(rows))


def fill_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
  """The labels of the generated examples that fill each class up to the largest one."""
  counts = np.bincount(y, minlength=num_classes)
  return np.repeat(np.arange(num_classes, dtype=np.int32), counts.max() - counts)


def classwise_fid(
  exp: Experiment, state: Any, net: feature_net.FeatureNet, *, per_class: int, seed: int = 0
) -> list[dict[str, Any]]:
  """Per class: its share of the training subset and the FID of min(per_class, test images of
  the class) samples of it against those test images, in the feature network's features."""
  ds, k = exp.dataset, exp.spec.num_classes
  counts = np.bincount(ds.y_train, minlength=k)
  embed = jax.jit(lambda p, v: net.features(p, data.normalize(v)))

  def features(x: np.ndarray, bs: int = 256) -> np.ndarray:  # fixed batches: one compilation
    out = []
    for start in range(0, len(x), bs):
      chunk = x[start : start + bs]
      padded = np.concatenate([chunk, np.zeros((bs - len(chunk),) + x.shape[1:], x.dtype)])
      out.append(np.asarray(embed(net.params, padded), np.float64)[: len(chunk)])
    return np.concatenate(out)

  sizes = [min(per_class, int(np.sum(ds.y_test == c))) for c in range(k)]
  labels = np.repeat(np.arange(k, dtype=np.int32), sizes)
  fake_features = features(few_shot.sample_classes(exp, state, labels, seed=seed))
  out = []
  for c, n in enumerate(sizes):
    feats = [features(ds.x_test[ds.y_test == c][:n]), fake_features[labels == c]]
    out.append(
      {
        "class": c,
        "train_count": int(counts[c]),
        "share": float(counts[c] / counts.sum()),
        "fid": float(sample_quality.fid(*feats)),
        "examples": n,
      }
    )
  return out


def measure(
  exp: Experiment,
  state: Any,
  *,
  seeds: int,
  steps: int,
  batch_size: int,
  learning_rate: float,
  fid_per_class: int = 500,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Test scores of the four classifiers (see the module doc), mean and std over `seeds`, and
  the GAN's per-class FID."""
  ds, k = exp.dataset, exp.spec.num_classes
  if seeds < 1 or steps < 1 or batch_size < 1 or fid_per_class < 2:
    raise UsageError(
      "--seeds, --classifier_steps and --classifier_batch_size must be positive integers, "
      "--fid_per_class at least 2"
    )
  x, y = ds.x_train, ds.y_train
  weights = compute_class_weight("balanced", classes=np.arange(k), y=y)
  per_seed: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
  t0 = time.perf_counter()
  for seed in range(seeds):
    y_fill = fill_labels(y, k)
    x_fill = few_shot.sample_classes(exp, state, y_fill, seed=seed)
    rows = oversample(y, k, seed)
    sets = {
      "imbalanced": (x, y, None),
      "class_weighted": (x, y, weights),
      "oversampled": (x[rows], y[rows], None),
      "gan_filled": (np.concatenate([x, x_fill]), np.concatenate([y, y_fill]), None),
    }
    for method, (xs, ys, w) in sets.items():
      model, params = feature_net.train_classifier(
        xs,
        ys,
        k,
        num_steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        class_weights=w,
      )
      pred = feature_net.predict(model, params, ds.x_test)
      per_seed[method].append(scores(ds.y_test, pred, k))
    log(
      f"seed {seed}: "
      + ", ".join(f"{m} {per_seed[m][-1]['balanced_accuracy']:.4f}" for m in METHODS)
      + f" (balanced accuracy) [{time.perf_counter() - t0:.0f} s]"
    )
  net = feature_net.load_or_train(
    ds if ds.unsplit is None else ds.unsplit,
    exp.cfg.data_dir or data.default_data_dir(),
    log=log,
  )
  counts = np.bincount(y, minlength=k)
  return {
    "workdir": os.path.abspath(exp.ctx.workdir),
    "model": exp.cfg.model,
    "dataset": ds.name,
    "class_balance": exp.cfg.class_balance,
    "gan_step": int(state.step),
    "num_classes": k,
    "train_counts": [int(n) for n in counts],
    "imbalance_ratio": float(counts.max() / counts.min()),
    "settings": {
      "seeds": seeds,
      "classifier_steps": steps,
      "classifier_batch_size": batch_size,
      "classifier_learning_rate": learning_rate,
      "fid_per_class": fid_per_class,
      "test_examples": len(ds.x_test),
      "class_weights": [float(w) for w in weights],
    },
    "methods": {
      m: {
        name: few_shot.summary([r[name] for r in per_seed[m]])
        for name in ("accuracy", "balanced_accuracy", "worst_class_recall")
      }
      for m in METHODS
    },
    "classwise_fid": classwise_fid(exp, state, net, per_class=fid_per_class),
  }


def plot(results: dict[str, Any], path: str) -> None:
  """Left: each method's test accuracy, balanced accuracy and worst-class recall (mean +-
  std). Right: the GAN's per-class FID against the class's share of the training subset."""
  from matplotlib.figure import Figure  # noqa: PLC0415  (plotting only)

  fig = Figure(figsize=(11, 4), dpi=120)
  ax, ax_fid = fig.subplots(1, 2)
  names = ("accuracy", "balanced_accuracy", "worst_class_recall")
  width = 0.8 / len(METHODS)
  for i, m in enumerate(METHODS):
    r = results["methods"][m]
    ax.bar(
      np.arange(len(names)) + (i - (len(METHODS) - 1) / 2) * width,
      [r[n]["mean"] for n in names],
      width,
      yerr=[r[n]["std"] for n in names],
      capsize=2,
      label=m.replace("_", " "),
    )
  ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
  ax.set_ylim(0, 1)
  ax.set_ylabel("test split (balanced)")
  ax.set_title(
    f"{results['dataset']} {results['class_balance']} ({results['settings']['seeds']} seeds)",
    fontsize=9,
  )
  ax.legend(fontsize=7, loc="lower left")
  ax.grid(True, axis="y", alpha=0.3)
  per_class = results["classwise_fid"]
  shares = [c["share"] for c in per_class]
  ax_fid.plot(shares, [c["fid"] for c in per_class], "o")
  for c in per_class:
    ax_fid.annotate(str(c["class"]), (c["share"], c["fid"]), fontsize=7)
  ax_fid.set_xscale("log")
  ax_fid.set_xlabel("class share of the imbalanced training split")
  ax_fid.set_ylabel("class-wise FID (feature network)")
  ax_fid.set_title(f"{results['model']} --conditional, step {results['gan_step']}", fontsize=9)
  ax_fid.grid(True, alpha=0.3)
  fig.tight_layout()
  files.atomic_save(path, fig.savefig, suffix=".png")


def table(results: dict[str, Any]) -> str:
  """A plain-text table: one row per method, then the per-class FID."""
  names = ("accuracy", "balanced_accuracy", "worst_class_recall")
  lines = [f"{'method':>15} | " + " | ".join(f"{n:>19}" for n in names)]
  for m in METHODS:
    r = results["methods"][m]
    lines.append(
      f"{m:>15} | "
      + " | ".join(f"{r[n]['mean']:.4f} +- {r[n]['std']:.4f}".rjust(19) for n in names)
    )
  lines.append(
    "class-wise FID (class: train count, FID): "
    + ", ".join(
      f"{c['class']}: {c['train_count']}, {c['fid']:.2f}" for c in results["classwise_fid"]
    )
  )
  return "\n".join(lines)


def run(workdir: str, **settings: Any) -> dict[str, Any]:
  """`measure` on the run in `workdir`; writes imbalance.json and imbalance.png there."""
  exp, state = load_imbalanced_gan(workdir)
  return few_shot.save_results(workdir, "imbalance", measure(exp, state, **settings), plot)
