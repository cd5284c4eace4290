r"""Train a dlu model.

  python -m experiments.train --flagfile=experiments/configs/ae_seed_fashion_mnist.flags \
      --workdir=/tmp/ae_seed

Any flag may follow the flagfile to override it. Rerunning the same command resumes.
On a cluster the same command runs in every process (see scripts/launch_*).
"""

import sys

from absl import app, flags

from dlu import cli, distributed, train_loop
from dlu import flags as dlu_flags
from dlu.errors import UsageError

FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv)
  started = False
  try:
    started = distributed.initialize_from_flags(FLAGS)
    train_loop.train_and_evaluate(dlu_flags.config_from_flags(FLAGS), FLAGS.workdir)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train_loop.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  finally:
    distributed.shutdown(started)


if __name__ == "__main__":
  app.run(main)
