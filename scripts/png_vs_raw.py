r"""Reading images stored raw in records against decoding them from PNG, on one core.

  python scripts/png_vs_raw.py --records=DIR [--rows=20000 --batch=256]

Takes --rows images of a records directory (e.g. written by scripts/synthetic_records.py),
and times (a) reading them from the records in random batches, as training does, and
(b) decoding the same images from PNG bytes held in memory (the PNG files' reading not
counted, so (b) is an upper bound for PNG records). Prints rows/s and bytes per row of each.
"""

from __future__ import annotations

import io
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dlu import data  # noqa: E402
from dlu.runtime import cli

flags.DEFINE_string("records", None, "A records directory of images.")
flags.DEFINE_integer("rows", 20000, "Images to time.")
flags.DEFINE_integer("batch", 256, "Rows per random batch.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  cli.start(argv)
  from PIL import Image

  x = data.load(f"records:{FLAGS.records}").x_train
  n = min(FLAGS.rows, len(x))
  order = np.random.default_rng(0).permutation(len(x))[:n]
  batches = [order[i : i + FLAGS.batch] for i in range(0, n, FLAGS.batch)]

  start = time.perf_counter()
  for rows in batches:
    x[np.sort(rows)]
  raw_rate = n / (time.perf_counter() - start)

  pngs = []
  for rows in batches:
    for image in x[rows]:
      buffer = io.BytesIO()
      Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "PNG")
      pngs.append(buffer.getvalue())
  start = time.perf_counter()
  for k in range(0, n, FLAGS.batch):
    np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in pngs[k : k + FLAGS.batch]])
  png_rate = n / (time.perf_counter() - start)

  shape = "x".join(map(str, x.shape[1:]))
  row_bytes = int(np.prod(x.shape[1:]))
  png_bytes = sum(map(len, pngs)) / n
  print(f"{n:,} images of {shape}, random batches of {FLAGS.batch}, one core:")
  print(f"  raw records read: {raw_rate:>10,.0f} rows/s  {row_bytes:>7,} bytes/row")
  print(f"  PNG decode:       {png_rate:>10,.0f} rows/s  {png_bytes:>7,.0f} bytes/row")
  print(f"  raw is {raw_rate / png_rate:.1f}x faster; PNG is {png_bytes / row_bytes:.0%} the size")


if __name__ == "__main__":
  app.run(main)
