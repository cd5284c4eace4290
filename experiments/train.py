r"""Train a dlu model.

  python -m experiments.train --flagfile=experiments/configs/ae_seed_fashion_mnist.flags \
      --workdir=/tmp/ae_seed

Any flag may follow the flagfile to override it. Rerunning the same command resumes.
On a cluster the same command runs in every process (see scripts/launch_*).
"""

from absl import flags

from dlu import cli, distributed, train_loop
from dlu import flags as dlu_flags

FLAGS = flags.FLAGS


def main(argv):
  del argv
  started = distributed.initialize_from_flags(FLAGS)
  try:
    train_loop.train_and_evaluate(dlu_flags.config_from_flags(FLAGS), FLAGS.workdir)
  finally:
    distributed.shutdown(started)


if __name__ == "__main__":
  cli.run(main)
