r"""Prepares a dataset once so that training runs can read it offline.

  python -m experiments.prepare_data --dataset=fashion_mnist [--data_dir=DIR] [--idx_dir=DIR]

fashion_mnist is built from local IDX files when present (no TensorFlow needed); other
tfds datasets are downloaded, which needs `pip install 'dlu[prepare]'`.
"""

import sys

from absl import app, flags

from dlu import data
from dlu.errors import UsageError

# The training flags define the same names; define them only once per process.
if "dataset" not in flags.FLAGS:
  flags.DEFINE_string(
    "dataset",
    "fashion_mnist",
    "digits, a tfds name (fashion_mnist, mnist, cifar10, NAME[/CONFIG][:VERSION]), "
    "npz:PATH or folder:DIR.",
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

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    print(data.prepare(FLAGS.dataset, data_dir=FLAGS.data_dir, idx_dir=FLAGS.idx_dir))
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
