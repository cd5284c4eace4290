r"""Evaluate a trained dlu run from its workdir; results go to DIR/eval.json.

  python -m experiments.evaluate --workdir=workdirs/ae_seed

Flags given here (e.g. --eval_batch_size) override those the run recorded in flags.txt. The test
split is scored, from the run's best checkpoint when it kept one (--keep_best_checkpoint), else
its latest: --checkpoint=best|latest|STEP.
"""

import json

from absl import flags

from dlu import config
from dlu.runtime import cli
from dlu.train import evaluate

FLAGS = flags.FLAGS


def main(argv):
  del argv
  overrides = {
    name: FLAGS[name].value
    for name in vars(config.config_from_flags(FLAGS))
    if FLAGS[name].present and name != "workdir"
  }
  results = evaluate.evaluate_workdir(FLAGS.workdir, **overrides)
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  cli.run(main)
