"""Class-conditional GAN samples as training data, and what they are worth to a classifier.

    exp, state = few_shot.load_conditional_gan("workdirs/cdcgan")
    x, y = few_shot.sample_classes(exp, state, few_shot.balanced(100, exp.spec.num_classes), seed=0)

`measure` trains the feature network's architecture (dlu.metrics.feature_net.Classifier) on k real
labelled examples per class, alone and with generated examples added, and on generated
examples alone (TSTR: train on synthetic, test on real), and scores each on the real test
split over several seeds. Every classifier gets the same number of steps, so the
comparison is compute-matched. Seed s picks the real examples (the k-subsets are nested:
the first k of one fixed per-class shuffle), draws the generated examples and initialises
and shuffles the classifier.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from dlu import config, files
from dlu.errors import UsageError
from dlu.families.gan import GAN
from dlu.metrics import feature_net
from dlu.runtime import parallel
from dlu.train import experiment
from dlu.train.experiment import Experiment

CONDITIONAL_MODELS = GAN.models


def load_conditional_gan(workdir: str) -> tuple[Experiment, Any]:
  """The experiment recorded in `workdir`'s flags.txt and its latest checkpointed state.

  Raises UsageError unless `workdir` holds a trained class-conditional GAN run.
  """
  if not workdir or not os.path.isdir(workdir):
    raise UsageError(
      f"--workdir={workdir!r} is not a directory: expected the workdir of a "
      "trained conditional GAN run (--model=dcgan --conditional)"
    )
  cfg = config.config_from_flagfile(os.path.join(workdir, "flags.txt"))
  if cfg.model not in CONDITIONAL_MODELS or not cfg.conditional:
    what = f"--model={cfg.model}" + (" without --conditional" if cfg.model in GAN.models else "")
    raise UsageError(
      f"--workdir={workdir} holds a {what} run; expected a class-conditional GAN "
      f"(--model={'|'.join(CONDITIONAL_MODELS)} --conditional)"
    )
  return experiment.restore_trained(workdir)


def balanced(per_class: int, num_classes: int) -> np.ndarray:
  """0, 1, ..., K-1 repeated `per_class` times. [per_class * K] int32"""
  return np.tile(np.arange(num_classes, dtype=np.int32), per_class)


def to_stored(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """Pixels in [0, 1] as the dataset stores them: uint8 0..255 or float32 in [0, 1]."""
  x = np.clip(x, 0.0, 1.0)
  return np.round(x * 255).astype(np.uint8) if dtype == np.uint8 else x.astype(np.float32)


def sample_classes(
  exp: Experiment, state: Any, labels: np.ndarray, *, seed: int, batch_size: int | None = None
) -> np.ndarray:
  """Images of the averaged generator, image i of class labels[i], stored like the dataset's
  train split (uint8 or float32). Noise from `seed`. [N, H, W, C]"""
  family = exp.family
  if not isinstance(family, GAN) or not family.needs_label:
    raise UsageError("sample_classes needs a class-conditional GAN (--conditional)")
  labels = np.asarray(labels, np.int32)
  if labels.size and not 0 <= labels.min() <= labels.max() < family.num_classes:
    raise UsageError(f"labels must be classes 0..{family.num_classes - 1}")
  bs = batch_size or exp.ctx.batch_size
  bs = -(-bs // jax.device_count()) * jax.device_count()
  sharded = parallel.data_sharded(exp.mesh)
  draw = _draw_fn(family, exp.mesh, bs, exp.cfg.latent_dim)
  key, out = jax.random.key(seed), []
  for i, start in enumerate(range(0, len(labels), bs)):
    y = np.zeros(bs, np.int32)
    chunk = labels[start : start + bs]
    y[: len(chunk)] = chunk
    y = jax.make_array_from_callback(y.shape, sharded, lambda index, y=y: y[index])
    x = draw(state, jax.random.fold_in(key, i), y)
    out.append(np.asarray(multihost_utils.process_allgather(x, tiled=True))[: len(chunk)])
  shape = (0,) + exp.spec.example_shape
  return to_stored(np.concatenate(out) if out else np.zeros(shape), exp.dataset.x_train.dtype)


@functools.lru_cache(maxsize=4)
def _draw_fn(family: GAN, mesh: Any, bs: int, latent_dim: int) -> Callable[..., jax.Array]:
  """The jitted draw of `bs` images (kept, so repeated draws compile once)."""
  repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(
    lambda s, k, y: family.to_unit(family.sample(s, jax.random.normal(k, (bs, latent_dim)), y)),
    in_shardings=(repl, repl, sharded),
    out_shardings=sharded,
  )


def conditional_samples(
  workdir: str, per_class: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """`per_class` generated images of every class from the run in `workdir`: (x, y)."""
  exp, state = load_conditional_gan(workdir)
  y = balanced(per_class, exp.spec.num_classes)
  return sample_classes(exp, state, y, seed=seed), y


def few_per_class(y: np.ndarray, k: int, num_classes: int, seed: int) -> np.ndarray:
  """Rows of `y` holding k examples of each class: the first k of a per-class shuffle fixed by
  `seed`, so a smaller k's rows are among a larger k's. [k * K], sorted"""
  rng = np.random.default_rng([seed, 1])
  rows = [rng.permutation(np.flatnonzero(y == c))[:k] for c in range(num_classes)]
  return np.sort(np.concatenate(rows))


def summary(values: Sequence[float]) -> dict[str, Any]:
  """mean, std (sample, ddof=1; 0 for one value) and the values themselves."""
  v = np.asarray(values, np.float64)
  return {
    "mean": float(v.mean()),
    "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
    "per_seed": [float(a) for a in v],
  }


def measure(
  exp: Experiment,
  state: Any,
  *,
  real_per_class: Sequence[int],
  synthetic_per_class: int,
  seeds: int,
  steps: int,
  batch_size: int,
  learning_rate: float,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Test accuracies of classifiers trained on real, real + synthetic and synthetic data."""
  ds, num_classes = exp.dataset, exp.spec.num_classes
  smallest = int(np.bincount(ds.y_train, minlength=num_classes).min())
  if not real_per_class or min(real_per_class) < 1 or max(real_per_class) > smallest:
    raise UsageError(
      f"--real_per_class values must be in 1..{smallest} (the smallest class of "
      f"the {ds.name} train split); got {','.join(map(str, real_per_class))}"
    )
  if synthetic_per_class < 1 or seeds < 1 or steps < 1 or batch_size < 1:
    raise UsageError(
      "--synthetic_per_class, --seeds, --classifier_steps and "
      "--classifier_batch_size must be positive integers"
    )

  def accuracy(x, y, seed):
    model, params = feature_net.train_classifier(
      x,
      y,
      num_classes,
      num_steps=steps,
      batch_size=batch_size,
      learning_rate=learning_rate,
      seed=seed,
    )
    return feature_net.accuracy(model, params, ds.x_test, ds.y_test)

  real = {k: [] for k in real_per_class}
  mixed = {k: [] for k in real_per_class}
  tstr = []
  t0 = time.perf_counter()
  for seed in range(seeds):
    y_syn = balanced(synthetic_per_class, num_classes)
    x_syn = sample_classes(exp, state, y_syn, seed=seed)
    tstr.append(accuracy(x_syn, y_syn, seed))
    log(
      f"seed {seed}: synthetic only ({len(y_syn)} images) {tstr[-1]:.4f} "
      f"[{time.perf_counter() - t0:.0f} s]"
    )
    for k in real_per_class:
      rows = few_per_class(ds.y_train, k, num_classes, seed)
      x, y = ds.x_train[rows], ds.y_train[rows]
      real[k].append(accuracy(x, y, seed))
      mixed[k].append(accuracy(np.concatenate([x, x_syn]), np.concatenate([y, y_syn]), seed))
      log(
        f"seed {seed}, k={k}: real {real[k][-1]:.4f}, real + synthetic {mixed[k][-1]:.4f} "
        f"[{time.perf_counter() - t0:.0f} s]"
      )
  per_k = {}
  for k in real_per_class:
    per_k[str(k)] = {
      "real": summary(real[k]),
      "real_plus_synthetic": summary(mixed[k]),
      "gain": float(np.mean(mixed[k]) - np.mean(real[k])),
    }
  return {
    "workdir": os.path.abspath(exp.ctx.workdir),
    "model": exp.cfg.model,
    "dataset": ds.name,
    "gan_step": int(state.step),
    "num_classes": num_classes,
    "settings": {
      "real_per_class": [int(k) for k in real_per_class],
      "synthetic_per_class": synthetic_per_class,
      "seeds": seeds,
      "classifier_steps": steps,
      "classifier_batch_size": batch_size,
      "classifier_learning_rate": learning_rate,
      "test_examples": len(ds.x_test),
    },
    "per_k": per_k,
    "tstr": summary(tstr),
  }


def plot(results: dict[str, Any], path: str) -> None:
  """Test accuracy against k (log scale): real and real + synthetic with +-1 std bands, and
  TSTR as a horizontal line."""
  import matplotlib.ticker  # noqa: PLC0415  (plotting only)
  from matplotlib.figure import Figure  # noqa: PLC0415

  ks = results["settings"]["real_per_class"]
  syn = results["settings"]["synthetic_per_class"]
  fig = Figure(figsize=(6, 4), dpi=120)
  ax = fig.subplots()
  for key, label, colour in (
    ("real", "real only", "tab:blue"),
    ("real_plus_synthetic", f"real + {syn} synthetic per class", "tab:orange"),
  ):
    mean = np.array([results["per_k"][str(k)][key]["mean"] for k in ks])
    std = np.array([results["per_k"][str(k)][key]["std"] for k in ks])
    ax.plot(ks, mean, "o-", color=colour, label=label)
    ax.fill_between(ks, mean - std, mean + std, color=colour, alpha=0.2)
  tstr = results["tstr"]
  ax.axhline(
    tstr["mean"],
    color="tab:green",
    linestyle="--",
    label=f"synthetic only (TSTR) {tstr['mean']:.3f}",
  )
  ax.axhspan(tstr["mean"] - tstr["std"], tstr["mean"] + tstr["std"], color="tab:green", alpha=0.1)
  ax.set_xscale("log")
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("real labelled examples per class (k)")
  ax.set_ylabel("test accuracy")
  ax.set_title(
    f"{results['dataset']}: {results['model']} --conditional, "
    f"step {results['gan_step']} ({results['settings']['seeds']} seeds)"
  )
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  files.atomic_save(path, fig.savefig, suffix=".png")


def table(results: dict[str, Any]) -> str:
  """A plain-text table of the results: one row per k, then TSTR."""
  lines = [f"{'k':>6} | {'real':>15} | {'real + synthetic':>16} | {'gain':>7}"]
  for k in results["settings"]["real_per_class"]:
    r = results["per_k"][str(k)]
    lines.append(
      f"{k:>6} | {r['real']['mean']:.4f} +- {r['real']['std']:.4f} | "
      f"{r['real_plus_synthetic']['mean']:.4f} +- {r['real_plus_synthetic']['std']:.4f}"
      f" | {r['gain']:+.4f}"
    )
  t = results["tstr"]
  lines.append(
    f"synthetic only (TSTR, {results['settings']['synthetic_per_class']} per class): "
    f"{t['mean']:.4f} +- {t['std']:.4f}"
  )
  return "\n".join(lines)


def run(workdir: str, **settings: Any) -> dict[str, Any]:
  """`measure` on the run in `workdir`; writes augment.json and augment.png there."""
  exp, state = load_conditional_gan(workdir)
  return save_results(workdir, "augment", measure(exp, state, **settings), plot)


def save_results(workdir: str, name: str, results: dict[str, Any], plot_fn: Any) -> dict:
  """WORKDIR/NAME.json and the figure `plot_fn(results, path)` draws, NAME.png (lead process)."""
  if parallel.is_lead_process():
    files.write_json(os.path.join(workdir, f"{name}.json"), results)
    plot_fn(results, os.path.join(workdir, f"{name}.png"))
  return results
