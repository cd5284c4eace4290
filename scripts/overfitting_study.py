r"""Overfitting, measured: a deep MLP autoencoder on a small Fashion-MNIST subset, with and
without dropout, weight decay and early stopping.

  python scripts/overfitting_study.py --out=/tmp/overfit [--steps=3000] [--every=150]

Every run trains `ae_mlp` on --per_class training images per class (`--class_balance=counts:...`;
500: 5,000 images) and evaluates on the validation split (10% of the training split) every
--every steps, keeping a checkpoint there. The test split never guides training: its
curve is computed afterwards, from the kept checkpoints, only to draw it beside the validation
curve. Early stopping (`--early_stopping_metric=mse --early_stopping_patience=--patience`) is
read off the plain run: with the same seed a run with it is the plain run up to the step it
stops at, so its decision is replayed (`dlu.train.selection.Watch`) on the plain run's validation
rows. Prints a table (the last step's test MSE; the best validation step and its test MSE) and
writes OUT/overfitting.json and OUT/overfitting.png.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dlu import config  # noqa: E402
from dlu.runtime import batched_eval, checkpointing, cli, parallel
from dlu.train import experiment, loop, selection

flags.DEFINE_string("out", None, "Folder for the runs, overfitting.json and overfitting.png.")
flags.DEFINE_integer("steps", 3000, "Training steps of every run (batch 128: ~77 epochs of 5,000).")
flags.DEFINE_integer("every", 150, "Steps between validation evals (and kept checkpoints).")
flags.DEFINE_integer("patience", 4, "Early stopping's patience, in evals.")
flags.DEFINE_integer("per_class", 500, "Training images per class.")
flags.DEFINE_list("runs", ["plain", "dropout", "weight_decay"], "Runs to train.")
FLAGS = flags.FLAGS

COMMON = dict(
  model="ae_mlp",
  widths=["512", "256"],
  latent_dim=32,
  dataset="fashion_mnist",
  batch_size=128,
  optimizer="adam",
  learning_rate=1e-3,
  evaluators=["metrics"],
  keep_best_checkpoint="mse",
)
RUNS = {
  "plain": {},
  "dropout": dict(dropout=0.2),
  "weight_decay": dict(optimizer="adamw", weight_decay=0.1),
}


def early_stopping(valid: dict[int, float], patience: int) -> tuple[int, int]:
  """(the step early stopping stops at, its best step) on a run's validation MSE by step."""
  watch = selection.Watch("mse")
  for step in sorted(valid):
    watch.update(step, {"mse": valid[step]})
    if watch.since_best >= patience:
      return step, watch.best_step
  return max(valid), watch.best_step


def test_curve(workdir: str) -> dict[int, float]:
  """Test MSE of every kept checkpoint (for the plot only; nothing is chosen on it)."""
  exp, _ = experiment.restore_trained(workdir, checkpoint="latest")
  _, abstract = parallel.make_init(exp.family, exp.mesh)
  eval_sums = parallel.make_eval_sums(exp.family, exp.mesh)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=10_000)
  curve = {}
  try:
    for step in sorted(ckpt.manager.all_steps()):
      state = ckpt.restore(abstract, step)
      metrics = batched_eval.mean_metrics(
        eval_sums,
        state,
        exp.dataset.x_test,
        exp.ctx.rng,
        mesh=exp.mesh,
        batch_size=exp.ctx.batch_size,
      )
      curve[int(step)] = float(metrics["mse"])
  finally:
    ckpt.close()
  return curve


def rows(workdir: str, split: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def plot(results: dict, path: str, num_images: int, batch_size: int = 128) -> None:
  """Validation (solid) and test (dotted) MSE against epochs; thin lines at the best validation
  step of each run, a dashed one where early stopping stops the plain run."""
  steps_per_epoch = num_images / batch_size
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  for i, (name, r) in enumerate(results.items()):
    colour = f"C{i}"
    valid = sorted((int(s), v) for s, v in r["valid_curve"].items())
    test = sorted((int(s), v) for s, v in r["test_curve"].items())
    ax.plot(
      [s / steps_per_epoch for s, _ in valid],
      [v for _, v in valid],
      "-",
      color=colour,
      label=f"{name}: validation",
    )
    ax.plot(
      [s / steps_per_epoch for s, _ in test],
      [v for _, v in test],
      ":",
      color=colour,
      label=f"{name}: test",
    )
    ax.axvline(r["best_step"] / steps_per_epoch, color=colour, alpha=0.3, linewidth=1)
    if "early_stopping_stop_step" in r:
      ax.axvline(
        r["early_stopping_stop_step"] / steps_per_epoch,
        color=colour,
        linestyle="--",
        linewidth=1,
        label=f"{name}: early stopping stops",
      )
  ax.set_xlabel(f"epoch ({num_images:,} training images)")
  ax.set_ylabel("MSE")
  ax.set_yscale("log")
  ax.set_title(
    f"ae_mlp 512-256-32 on {num_images:,} Fashion-MNIST images (thin: best validation)",
    fontsize=9,
  )
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(argv):
  cli.start(argv)
  os.makedirs(FLAGS.out, exist_ok=True)
  counts = "counts:" + ",".join([str(FLAGS.per_class)] * 10)
  results = {}
  for name in FLAGS.runs:
    workdir = os.path.join(FLAGS.out, name)
    cfg = config.make_config(
      **{**COMMON, "class_balance": counts, **RUNS[name]},
      num_steps=FLAGS.steps,
      eval_every=FLAGS.every,
      log_every=FLAGS.every,
      checkpoint_every=FLAGS.every,
      keep_checkpoints=FLAGS.steps // FLAGS.every + 1,
    )
    t0 = time.perf_counter()
    loop.train_and_evaluate(cfg, workdir)
    valid = {r["step"]: r["mse"] for r in rows(workdir, "valid")}
    (gap,) = rows(workdir, "generalisation")[-1:]
    test = test_curve(workdir)
    last = max(test)
    results[name] = {
      "flags": RUNS[name],
      "last_step": last,
      "last_test_mse": test[last],
      "last_train_mse": gap["train/mse"],
      "last_valid_mse": gap["valid/mse"],
      "best_step": gap["best_step"],
      "best_valid_mse": gap["best_value"],
      "best_test_mse": test[gap["best_step"]],
      "seconds": time.perf_counter() - t0,
      "valid_curve": valid,
      "test_curve": test,
    }
    if name == "plain":
      stop, best = early_stopping(valid, FLAGS.patience)
      results[name].update(
        early_stopping_stop_step=stop,
        early_stopping_best_step=best,
        early_stopping_test_mse=test[best],
      )
    print(
      f"{name}: {json.dumps({k: v for k, v in results[name].items() if 'curve' not in k})}",
      flush=True,
    )
  with open(os.path.join(FLAGS.out, "overfitting.json"), "w") as f:
    json.dump(results, f, indent=2)
  plot(results, os.path.join(FLAGS.out, "overfitting.png"), FLAGS.per_class * 10)
  print(
    f"{'run':>15} | last step | test MSE (last) | train MSE (last) | best valid step | "
    "test MSE (best valid)"
  )
  for name, r in results.items():
    print(
      f"{name:>15} | {r['last_step']:>9} | {r['last_test_mse']:>15.5f} | "
      f"{r['last_train_mse']:>16.5f} | {r['best_step']:>15} | {r['best_test_mse']:>.5f}"
    )


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)
