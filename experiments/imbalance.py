r"""Imbalanced data: a classifier on an imbalanced split alone, class-weighted, oversampled, and
filled up by a class-conditional GAN's samples.

  python -m experiments.train --flagfile=experiments/configs/cdcgan_fashion_mnist.flags \
      --class_balance=longtail:100 --workdir=workdirs/cdcgan_lt100
  python -m experiments.imbalance --workdir=workdirs/cdcgan_lt100

--workdir is a conditional GAN trained on the imbalanced split itself (--class_balance). On
that same split, for each of --seeds seeds, the feature network's classifier is trained as it
is, with class-weighted loss, with random oversampling, and with the minority classes filled
up to the largest by the GAN's samples; each is scored on the real (balanced) test split:
accuracy, balanced accuracy and the worst class's recall. The GAN's class-wise FID (against
the test images of the class) is measured beside each class's share. Results:
DIR/imbalance.json and DIR/imbalance.png.
"""

import sys

from absl import app, flags

from dlu.errors import UsageError
from dlu.runtime import cli
from dlu.studies import imbalance
from experiments import classifier_flags  # noqa: F401  (--seeds, --classifier_*)

flags.DEFINE_integer(
  "fid_per_class",
  500,
  "Generated and test images per class for the class-wise FID (at most the class's test images).",
)

FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv)
  try:
    results = imbalance.run(
      FLAGS.workdir,
      seeds=FLAGS.seeds,
      steps=FLAGS.classifier_steps,
      batch_size=FLAGS.classifier_batch_size,
      learning_rate=FLAGS.classifier_learning_rate,
      fid_per_class=FLAGS.fid_per_class,
    )
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(imbalance.table(results))
  print(
    f"\nResults: {FLAGS.workdir}/imbalance.json\nPlot:    {FLAGS.workdir}/imbalance.png",
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
