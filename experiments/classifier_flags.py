"""Flags of the classifiers experiments.augment and experiments.imbalance train (the feature
network's architecture, dlu.metrics.feature_net.Classifier): one definition for both."""

from absl import flags

flags.DEFINE_integer("seeds", 3, "Repetitions (data subsets, generated sets, classifier inits).")
flags.DEFINE_integer(
  "classifier_steps",
  500,
  "Adam steps of every classifier, whatever its training set (a compute-matched comparison).",
)
flags.DEFINE_integer(
  "classifier_batch_size", 128, "Classifier minibatch size (at most the training set)."
)
flags.DEFINE_float(
  "classifier_learning_rate", 1e-3, "Classifier peak learning rate (cosine decay to 0)."
)
