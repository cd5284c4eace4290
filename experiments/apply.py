r"""Apply a trained dlu run to new data.

  python -m experiments.apply --workdir=workdirs/ae_table --input=csv:new_rows.csv \
      --output=scored.csv [--samples=16]

The state applied is the run's best checkpoint when it kept one (--keep_best_checkpoint), else
its latest (--checkpoint=best|latest|STEP). --input is any --dataset form: a table with the training columns (matched by name, in any
order), an npz (x: images or vectors), or a folder of images. Per input row the output holds
the embedding (`embedding`, or `embedding_0`, ... columns in a CSV), `score` (anomaly score: higher
is less like the training data), and for clustering runs `cluster` and `confidence` (the
run's clustering layer, or the k-means `experiments.evaluate` fitted). With --samples=N a
GAN or VAE also writes N generated examples (per class for conditional GANs) in the data's
own units (`samples`, `sample_labels` in the npz; DIR/samples.csv or .npz beside a CSV).
"""

import os

import numpy as np
from absl import flags

from dlu import files
from dlu.errors import UsageError
from dlu.runtime import cli
from dlu.train import apply

flags.DEFINE_string("input", None, "The rows to apply the run to: any --dataset form.")
flags.DEFINE_string("output", None, "Where the results go: PATH.npz or PATH.csv.")
flags.DEFINE_integer(
  "samples", 0, "Also draw this many samples (GANs, VAEs; per class when conditional); 0: none."
)

FLAGS = flags.FLAGS


def results(run: apply.Run, x: np.ndarray) -> dict[str, np.ndarray]:
  """What the run says of each row of `x` (those of its capabilities the model has)."""
  out = {}
  family = run.family
  if family.has_embedding:
    out["embedding"] = run.encode(x)
  if family.has_score:
    out["score"] = run.score(x)
  head = getattr(family, "assignments", None)
  if head is not None or os.path.isfile(os.path.join(run.exp.ctx.workdir, apply.KMEANS_FILE)):
    out["cluster"], out["confidence"] = run.assign(x)
  return out


def write_csv(path: str, columns: dict[str, np.ndarray]) -> None:
  names, values = [], []
  for name, v in columns.items():
    v = np.asarray(v)
    if v.ndim == 1:
      names.append(name)
      values.append(v[:, None])
    else:
      v = v.reshape(len(v), -1)
      names += [f"{name}_{i}" for i in range(v.shape[1])]
      values.append(v)
  table = np.concatenate([v.astype(np.float64) for v in values], axis=1) if values else None
  with files.atomic_write(path) as f:
    f.write(",".join(names) + "\n")
    if table is not None:
      np.savetxt(f, table, delimiter=",", fmt="%.7g")


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  files.atomic_save(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def main(argv):
  del argv
  if not FLAGS.input or not FLAGS.output:
    raise UsageError(
      "--input=SPEC (any --dataset form) and --output=PATH.npz|PATH.csv are both needed"
    )
  fmt = os.path.splitext(FLAGS.output)[1].lower()
  if fmt not in (".npz", ".csv"):
    raise UsageError(f"--output={FLAGS.output}: expected a path ending in .npz or .csv")
  out_dir = os.path.dirname(os.path.abspath(FLAGS.output))
  if not os.path.isdir(out_dir):
    raise UsageError(f"--output={FLAGS.output}: the folder {out_dir} does not exist")
  run = apply.load_run(FLAGS.workdir, checkpoint=FLAGS.checkpoint)
  x = apply.read_inputs(FLAGS.input, run)
  out = results(run, x)
  samples = run.sample(FLAGS.samples) if FLAGS.samples else None
  if fmt == ".npz":
    if samples is not None:
      out["samples"] = samples[0]
      if samples[1] is not None:
        out["sample_labels"] = samples[1]
    write_npz(FLAGS.output, out)
  else:
    write_csv(FLAGS.output, out)
    if samples is not None:
      base = os.path.splitext(FLAGS.output)[0] + "_samples"
      if run.dataset.is_image:
        write_npz(
          base + ".npz",
          {
            "samples": samples[0],
            **({"sample_labels": samples[1]} if samples[1] is not None else {}),
          },
        )
      else:
        pre = run.dataset.preprocessing
        names = list(pre.columns) if pre is not None else None
        cols = (
          {"": samples[0]} if names is None else {n: samples[0][:, i] for i, n in enumerate(names)}
        )
        if samples[1] is not None:
          cols["label"] = samples[1]
        write_csv(base + ".csv", cols)
  print(
    f"{len(x)} rows of {FLAGS.input} through {run}: {', '.join(out)} -> {FLAGS.output}", flush=True
  )


if __name__ == "__main__":
  cli.run(main)
