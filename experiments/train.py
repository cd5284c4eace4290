r"""Train a dlu model.

  python -m experiments.train --flagfile=experiments/configs/ae_seed_fashion_mnist.flags \
      --workdir=/tmp/ae_seed

Any flag may follow the flagfile to override it. Rerunning the same command resumes.
On a cluster the same command runs in every process (see scripts/launch_*).
"""

import signal
import sys

from absl import flags

from dlu import config
from dlu.runtime import cli, distributed
from dlu.train import loop

FLAGS = flags.FLAGS


def _sigterm_at_start_up(signum, frame):
  del signum, frame
  print("SIGTERM received during start-up; nothing written", flush=True)
  sys.exit(0)


def main(argv):
  del argv
  # Until training installs its own pre-emption handler: end cleanly, nothing written.
  signal.signal(signal.SIGTERM, _sigterm_at_start_up)
  started = distributed.initialize_from_flags(FLAGS)
  try:
    loop.train_and_evaluate(config.config_from_flags(FLAGS), FLAGS.workdir)
  finally:
    distributed.shutdown(started)


if __name__ == "__main__":
  cli.run(main)
