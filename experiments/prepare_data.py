r"""Prepares a dataset once so that training runs can read it offline.

  python -m experiments.prepare_data --dataset=fashion_mnist [--data_dir=DIR] [--idx_dir=DIR]

fashion_mnist is built from local IDX files when present (no TensorFlow needed); other
tfds datasets are downloaded, which needs `pip install 'dlu[prepare]'`.
"""

from absl import flags

from dlu import cli, data

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
  del argv
  print(data.prepare(FLAGS.dataset, data_dir=FLAGS.data_dir, idx_dir=FLAGS.idx_dir))


if __name__ == "__main__":
  cli.run(main)
