r"""Is a class-conditional GAN's output worth training on? Few-shot classifiers with and without it.

  python -m experiments.augment --workdir=workdirs/cdcgan --real_per_class=10,100,1000

--workdir is a trained conditional GAN run (e.g. experiments/configs/cdcgan_fashion_mnist.flags).
For each k in --real_per_class and each of --seeds seeds, the feature network's classifier is
trained on k real labelled examples per class, and on the same examples plus
--synthetic_per_class generated ones per class; once per seed it is trained on the generated
examples alone (TSTR). All are scored on the real test split. Results: DIR/augment.json and a
plot of accuracy against k, DIR/augment.png.
"""

from absl import flags

from dlu.errors import UsageError
from dlu.runtime import cli
from dlu.studies import few_shot
from experiments import classifier_flags  # noqa: F401  (--seeds, --classifier_*)

flags.DEFINE_list(
  "real_per_class",
  ["10", "100", "1000"],
  "Real labelled training examples per "
  "class (each value at most the smallest class of the train split).",
)
flags.DEFINE_integer(
  "synthetic_per_class",
  1000,
  "Generated examples per class added to the real ones, and the whole training set of TSTR.",
)

FLAGS = flags.FLAGS


def _real_per_class() -> list[int]:
  try:
    values = [int(v) for v in FLAGS.real_per_class]
  except ValueError:
    raise UsageError(
      f"--real_per_class must be a comma-separated list of positive integers, "
      f"got {','.join(FLAGS.real_per_class)}"
    ) from None
  if not values or min(values) < 1:
    raise UsageError(
      f"--real_per_class must be a comma-separated list of positive integers, "
      f"got {','.join(FLAGS.real_per_class)}"
    )
  return sorted(set(values))


def main(argv):
  del argv
  results = few_shot.run(
    FLAGS.workdir,
    real_per_class=_real_per_class(),
    synthetic_per_class=FLAGS.synthetic_per_class,
    seeds=FLAGS.seeds,
    steps=FLAGS.classifier_steps,
    batch_size=FLAGS.classifier_batch_size,
    learning_rate=FLAGS.classifier_learning_rate,
  )
  print(few_shot.table(results))
  print(
    f"\nResults: {FLAGS.workdir}/augment.json\nPlot:    {FLAGS.workdir}/augment.png", flush=True
  )


if __name__ == "__main__":
  cli.run(main)
