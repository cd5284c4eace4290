r"""A synthetic labelled image dataset of a chosen size, as records, for memory and throughput
measurements of the streaming input pipeline.

  python scripts/synthetic_records.py --out=/data/synth1g --gigabytes=1 \
      [--image_size=64 --channels=3 --num_classes=10 --seed=0 --workers=N --num_shards=N]

Then train with --dataset=records:OUT. --gigabytes counts raw pixels (10^9 bytes, H*W*C per
image). Images are procedural: per class an oriented sine grating (the class sets its angle and
frequency), per image a random phase, contrast and colour, two soft blobs and pixel noise, so
they compress a little but not to nothing and a model can tell the classes apart. Every image
depends only on (--seed, its row), so a resumed run (rerun the same command) writes the same
dataset. Shards of ~128 MB are written by worker processes; a finished OUT is left as it is.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dlu.data import preparation, writer  # noqa: E402
from dlu.errors import UsageError  # noqa: E402
from dlu.runtime import cli  # noqa: E402

flags.DEFINE_string("out", None, "Directory for the records.")
flags.DEFINE_float("gigabytes", 1.0, "Size of the dataset's pixels, in 10^9 bytes.")
flags.DEFINE_integer("image_size", 64, "Images are image_size x image_size.")
flags.DEFINE_integer("channels", 3, "1 (grey), 3 (RGB) or 4 (RGBA).")
flags.DEFINE_integer("num_classes", 10, "Classes (labels drawn uniformly).")
flags.DEFINE_integer("seed", 0, "Seed of every image and label.")
flags.DEFINE_integer("workers", None, "Worker processes; default: the CPUs.")
flags.DEFINE_integer("num_shards", None, "Shards; default about 128 MB each.")
FLAGS = flags.FLAGS

BATCH = 256  # rows rendered together; batches are aligned to rows 0, 256, ... (not to shards)


def labels(batch: int, num_classes: int, seed: int) -> np.ndarray:
  """The classes of rows batch*BATCH .. (batch+1)*BATCH, int32 [BATCH]."""
  return np.random.default_rng([seed, batch, 1]).integers(0, num_classes, BATCH, dtype=np.int32)


def render(batch: int, num_classes: int, size: int, channels: int, seed: int) -> np.ndarray:
  """The images of rows batch*BATCH .. (batch+1)*BATCH, uint8 [BATCH, size, size, channels]."""
  classes = labels(batch, num_classes, seed)
  rng = np.random.default_rng([seed, batch])
  u = rng.random((BATCH, 8), dtype=np.float32)
  grid = (np.arange(size, dtype=np.float32) + 0.5) / size
  yy, xx = grid[None, :, None], grid[None, None, :]  # [1, S, 1], [1, 1, S]
  angle = ((classes + u[:, 0] * 0.5) / num_classes * np.pi)[:, None, None].astype(np.float32)
  freq = (2 + (classes % 5) * 1.5 + u[:, 1])[:, None, None].astype(np.float32)
  phase = (u[:, 2] * 2 * np.pi)[:, None, None]
  turns = freq * np.cos(angle) * xx + freq * np.sin(angle) * yy + phase / np.float32(2 * np.pi)
  grating = np.sin(np.float32(2 * np.pi) * turns)  # [B, S, S]
  width = (0.08 + 0.15 * u[:, 7])[:, None, None]
  blobs = np.zeros((BATCH, size, size), np.float32)
  for b in range(2):
    cy, cx = u[:, 3 + b, None, None], u[:, 5 + b, None, None]
    blobs += (1 - 2 * b) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
  contrast = (30 + 40 * u[:, 0])[:, None, None, None]
  colour = contrast * (0.3 + 0.7 * rng.random((BATCH, 1, 1, channels), dtype=np.float32))
  tint = 60 * (0.3 + 0.7 * rng.random((BATCH, 1, 1, channels), dtype=np.float32))
  x = grating[..., None] * colour
  x += blobs[..., None] * tint
  x += _noise(size, channels, seed)[rng.integers(0, _NOISE_TILES, BATCH)]
  np.clip(x, 0, 255, out=x)
  return x.astype(np.uint8)


_NOISE_TILES = 64


@functools.cache
def _noise(size: int, channels: int, seed: int) -> np.ndarray:
  """Pixel noise (sd 6) around the mid grey 128.5 (so that the cast rounds), [64, S, S, C]:
  each image takes one tile."""
  rng = np.random.default_rng([seed, 2**32 - 1])
  return 128.5 + rng.normal(0, 6, (_NOISE_TILES, size, size, channels)).astype(np.float32)


def write_shard(
  num_classes: int, size: int, channels: int, seed: int, start: int, stop: int, path: str
) -> list:
  """Rows start..stop into the shard `path`; nothing is skipped."""

  def rows():
    for batch in range(start // BATCH, -(-stop // BATCH)):
      lo, hi = max(start, batch * BATCH) - batch * BATCH, min(stop, (batch + 1) * BATCH)
      yield from render(batch, num_classes, size, channels, seed)[lo : hi - batch * BATCH]

  writer.write_shard(path, rows())
  return []


def main(argv: list[str]) -> None:
  cli.start(argv)
  try:
    if not FLAGS.out:
      raise UsageError("--out=DIR is needed")
    size, channels, classes, seed = FLAGS.image_size, FLAGS.channels, FLAGS.num_classes, FLAGS.seed
    if FLAGS.gigabytes <= 0 or size < 1 or channels not in (1, 3, 4) or classes < 1:
      raise UsageError(
        "expected --gigabytes > 0, --image_size >= 1, --channels 1, 3 or 4, --num_classes >= 1"
      )
    n = max(2, round(FLAGS.gigabytes * 1e9 / (size * size * channels)))
    y = np.concatenate([labels(b, classes, seed) for b in range(-(-n // BATCH))])[:n]
    src = preparation.Source(
      kind="images",
      example_shape=(size, size, channels),
      dtype="uint8",
      rows={"all": n},
      labels={"all": y},
      shard=lambda split, start, stop: functools.partial(
        write_shard, classes, size, channels, seed, start, stop
      ),
      processes=True,
      meta={"num_classes": classes, "class_names": [f"class{k}" for k in range(classes)]},
    )
    name = f"synthetic:{size}x{size}x{channels}:{n}:{classes}classes:seed{seed}"
    print(
      preparation.write_source(
        src,
        FLAGS.out,
        source=name,
        what=name,
        num_shards=FLAGS.num_shards,
        workers=FLAGS.workers,
      )
    )
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
