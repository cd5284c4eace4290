r"""What streaming costs: the input pipeline alone, and training fed by it against the same run
with its data in device memory; peak memory of the whole process tree.

  # The pipeline alone: images/s with 0, 1 and 2 worker processes (no model)
  python scripts/stream_benchmark.py pipeline --dataset=records:/data/synth1g --batch_size=256
  # A dataset larger than memory: K copies of a records directory's shards (distinct files)
  python scripts/stream_benchmark.py replicate --dataset=records:/data/synth1g --copies=26 \
      --out_records=/data/synth26g
  # Training throughput and peak RSS, stream against device, same flags otherwise
  python scripts/stream_benchmark.py train --dataset=records:/data/fmnist \
      --compare_dataset=fashion_mnist --flagfile_for_train=experiments/configs/ae_conv_fashion_mnist.flags

`train` runs `experiments.train` in a fresh process per pipeline (device on --compare_dataset,
which holds the same rows in memory; stream on --dataset), polls the resident memory of the
process and its input workers every 0.2 s, and reads steps/s from the progress lines (the
first report, which includes compilation, is left out). Prints a table and writes --out as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("dataset", None, "The data to stream (records:DIR, npy:PATH, any --dataset).")
flags.DEFINE_string(
  "compare_dataset", None, "train: the same rows for the device-resident run (default --dataset)."
)
flags.DEFINE_string("flagfile_for_train", None, "train: the experiment's flagfile.")
flags.DEFINE_integer("batch_size", 256, "Global batch size.")
flags.DEFINE_integer("steps", 300, "Steps to time (pipeline) or train (train).")
flags.DEFINE_list("workers", ["0", "1", "2"], "--data_workers values to measure.")
flags.DEFINE_boolean("with_device", True, "train: also the device-resident run, for reference.")
flags.DEFINE_list("extra", [], "train: more flags for experiments.train, e.g. --model=ae_conv.")
flags.DEFINE_string("out", None, "Where to write the figures as JSON.")
flags.DEFINE_integer("copies", 2, "replicate: how many copies of the shards.")
flags.DEFINE_string("out_records", None, "replicate: the new records directory.")
FLAGS = flags.FLAGS


def pipeline() -> list[dict]:
  import jax
  import jax.numpy as jnp

  from dlu import data
  from dlu.data import feeds
  from dlu.runtime import parallel

  ds = data.load(FLAGS.dataset)
  mesh = parallel.make_mesh()
  sampler = data.BatchSampler(len(ds.x_train), FLAGS.batch_size, seed=0)
  step = jax.jit(lambda state, batch, rng: (state + batch["image"][0, 0, 0, 0], None))
  family = type("Reader", (), {"needs_index": False, "needs_label": False})()
  rows = []
  for workers in [int(w) for w in FLAGS.workers]:
    feed = feeds.make_feed(
      family,
      mesh,
      ds.x_train,
      sampler,
      step,
      jax.random.key(0),
      input_pipeline="stream",
      num_steps=FLAGS.steps + 10,
      data_workers=workers,
    )
    state = jnp.zeros((), jnp.uint8)
    for s in range(10):  # workers started, first batches through
      state, _ = feed(state, s, 1)
    jax.block_until_ready(state)
    t = time.perf_counter()
    for s in range(10, FLAGS.steps + 10):
      state, _ = feed(state, s, 1)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t
    feed.close()
    rows.append(
      {
        "workers": workers,
        "images_per_s": FLAGS.steps * FLAGS.batch_size / seconds,
        "example_shape": list(ds.example_shape),
      }
    )
    print(f"workers={workers}: {rows[-1]['images_per_s']:,.0f} images/s", flush=True)
  return rows


def _tree_rss_kib(pid: int) -> int:
  """Resident memory of `pid` and all its descendants, KiB."""
  children: dict[int, list[int]] = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
      except (OSError, IndexError, ValueError):
        continue
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    todo += children.get(p, [])
    try:
      with open(f"/proc/{p}/status") as f:
        total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
      continue
  return total


def _train_once(dataset: str, pipeline_flags: list[str], workdir: str) -> dict:
  cmd = [
    sys.executable,
    "-m",
    "experiments.train",
    f"--flagfile={FLAGS.flagfile_for_train}",
    f"--dataset={dataset}",
    f"--workdir={workdir}",
    f"--num_steps={FLAGS.steps}",
    f"--batch_size={FLAGS.batch_size}",
    f"--log_every={max(1, FLAGS.steps // 6)}",
    f"--eval_every={FLAGS.steps}",
    f"--checkpoint_every={FLAGS.steps}",
    "--evaluators=metrics",
    *pipeline_flags,
    *FLAGS.extra,
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
  peak = 0
  out = []
  os.set_blocking(proc.stdout.fileno(), False)
  while proc.poll() is None:
    peak = max(peak, _tree_rss_kib(proc.pid))
    chunk = proc.stdout.read()
    if chunk:
      out.append(chunk)
    time.sleep(0.2)
  out.append(proc.stdout.read() or b"")
  text = b"".join(out).decode(errors="replace")
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
  rates = [float(r.replace(",", "")) for r in re.findall(r"\| ([\d,.]+) steps/s", text)]
  return {
    "steps_per_s": float(np.mean(rates[1:])) if len(rates) > 1 else float("nan"),
    "peak_rss_mib": peak / 1024,
  }


def train() -> list[dict]:
  rows = []
  compare = FLAGS.compare_dataset or FLAGS.dataset
  runs = [("device", compare, ["--input_pipeline=device"])] if FLAGS.with_device else []
  runs += [
    (f"stream, {w} workers", FLAGS.dataset, ["--input_pipeline=stream", f"--data_workers={w}"])
    for w in FLAGS.workers
  ]
  for name, dataset, extra in runs:
    with tempfile.TemporaryDirectory() as workdir:
      row = {"pipeline": name, "dataset": dataset, **_train_once(dataset, extra, workdir)}
    rows.append(row)
    print(
      f"{name:>18}: {row['steps_per_s']:.2f} steps/s, "
      f"{row['steps_per_s'] * FLAGS.batch_size:,.0f} ex/s, peak RSS {row['peak_rss_mib']:,.0f} MiB",
      flush=True,
    )
  if FLAGS.with_device:
    for row in rows:
      row["relative_to_device"] = row["steps_per_s"] / rows[0]["steps_per_s"]
  return rows


def replicate() -> None:
  """--copies copies of every shard of --dataset (records:DIR, one split 'all') as the train
  split of a larger dataset, and its first shard as the test split: the same pixels repeated,
  in distinct files, so reading them is real disk traffic, and the same small test split
  whatever the size."""
  import shutil

  from dlu.data import records

  src = FLAGS.dataset.removeprefix("records:")
  meta = records.Meta.load(src)
  if set(meta.splits) != {"all"}:
    raise app.UsageError("replicate needs records with one split ('all')")
  info = meta.splits["all"]
  out = FLAGS.out_records
  os.makedirs(out, exist_ok=True)
  y = np.load(os.path.join(src, info["labels"])) if info.get("labels") else None
  count = FLAGS.copies * len(info["shards"])
  train = []
  for k in range(FLAGS.copies):
    for i, name in enumerate(info["shards"]):
      new = records.shard_name("train", k * len(info["shards"]) + i, count)
      if not os.path.exists(os.path.join(out, new)):
        shutil.copyfile(os.path.join(src, name), os.path.join(out, new + ".tmp"))
        os.replace(os.path.join(out, new + ".tmp"), os.path.join(out, new))
      train.append(new)
  test = records.shard_name("test", 0, 1)
  shutil.copyfile(os.path.join(src, info["shards"][0]), os.path.join(out, test))
  num_test = records.RecordArray(
    [os.path.join(out, test)], meta.example_shape, meta.dtype
  ).num_stored
  splits = {
    "train": {"num_examples": info["num_examples"] * FLAGS.copies, "shards": train, "labels": None},
    "test": {"num_examples": num_test, "shards": [test], "labels": None},
  }
  if y is not None:
    np.save(os.path.join(out, "labels_train.npy"), np.tile(y, FLAGS.copies))
    np.save(os.path.join(out, "labels_test.npy"), y[:num_test])
    splits["train"]["labels"], splits["test"]["labels"] = "labels_train.npy", "labels_test.npy"
  records.write_meta(out, records.Meta(**{**meta.__dict__, "splits": splits}))
  size = sum(os.path.getsize(os.path.join(out, s)) for s in train)
  print(
    f"{out}: {splits['train']['num_examples']:,} train rows ({size / 1e9:.1f} GB), {num_test:,} test"
  )


def main(argv):
  if len(argv) != 2 or argv[1] not in ("pipeline", "train", "replicate"):
    raise app.UsageError("usage: stream_benchmark.py pipeline|train|replicate --dataset=...")
  if not FLAGS.dataset:
    raise app.UsageError("--dataset is required")
  if argv[1] == "replicate":
    return replicate()
  if argv[1] == "train" and not FLAGS.flagfile_for_train:
    raise app.UsageError("train needs --flagfile_for_train")
  rows = pipeline() if argv[1] == "pipeline" else train()
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"mode": argv[1], "batch_size": FLAGS.batch_size, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
