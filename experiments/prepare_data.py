r"""Prepares a dataset once: for offline reading, or as records read by row.

  python -m experiments.prepare_data --dataset=fashion_mnist [--data_dir=DIR] [--idx_dir=DIR]
  python -m experiments.prepare_data --dataset=folder:DIR|csv:PATH|parquet:PATH|json:PATH|npz:PATH|NAME \
      --out=OUT [--label_column=NAME] [--num_shards=N] [--workers=N] [--skip_bad]

Without --out, fashion_mnist is built from local IDX files when present (no TensorFlow
needed); other tfds datasets are downloaded, which needs `pip install 'dlu[prepare]'`.
With --out the dataset is written as ArrayRecord shards in OUT (in parallel, resumable: a rerun
keeps the finished shards), and `--dataset=records:OUT` reads the same dataset by row.
"""

from absl import flags

from dlu import data
from dlu.data import preparation
from dlu.errors import UsageError
from dlu.runtime import cli

# The training flags define the same names; define them only once per process.
if "dataset" not in flags.FLAGS:
  flags.DEFINE_string(
    "dataset",
    "fashion_mnist",
    "digits, a tfds name (fashion_mnist, mnist, cifar10, NAME[/CONFIG][:VERSION]), "
    "npz:PATH, folder:DIR, csv:PATH, parquet:PATH or json:PATH.",
  )
if "data_dir" not in flags.FLAGS:
  flags.DEFINE_string(
    "data_dir",
    None,
    "Where tfds datasets are prepared; default $TFDS_DATA_DIR or ~/tensorflow_datasets.",
  )
if "idx_dir" not in flags.FLAGS:
  flags.DEFINE_string(
    "idx_dir", None, f"Directory of the Fashion-MNIST IDX files; default {data.DEFAULT_IDX_DIR}."
  )
if "label_column" not in flags.FLAGS:
  flags.DEFINE_string("label_column", None, "csv/parquet: the column holding labels.")
flags.DEFINE_string(
  "out", None, "Write the dataset as records (ArrayRecord shards) in this directory."
)
flags.DEFINE_integer(
  "num_shards",
  None,
  "--out: shards per split; default about 128 MB each (for a folder at least one per worker).",
)
flags.DEFINE_integer(
  "workers",
  None,
  "--out: processes decoding a folder's images (threads for other sources); default: the CPUs.",
)
flags.DEFINE_bool(
  "skip_bad",
  False,
  "--out: skip undecodable images, count them and list them in OUT/skipped.txt, instead of "
  "stopping at the first.",
)

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.out is None:
    for name in ("num_shards", "workers", "skip_bad", "label_column"):
      if FLAGS[name].present:
        raise UsageError(f"--{name} applies to preparing records: give --out=DIR too")
    print(data.prepare(FLAGS.dataset, data_dir=FLAGS.data_dir, idx_dir=FLAGS.idx_dir))
    return
  print(
    preparation.prepare_records(
      FLAGS.dataset,
      FLAGS.out,
      label_column=FLAGS.label_column,
      num_shards=FLAGS.num_shards,
      workers=FLAGS.workers,
      skip_bad=FLAGS.skip_bad,
      data_dir=FLAGS.data_dir,
      idx_dir=FLAGS.idx_dir,
    )
  )


if __name__ == "__main__":
  cli.run(main)
