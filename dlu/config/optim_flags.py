"""Flags of the optimisation: batch size, steps, optimizer, learning-rate schedule, clipping.
Read by `dlu.runtime.optim` and the run's set-up."""

from absl import flags

flags.DEFINE_integer("batch_size", 256, "Global batch size, split over all devices.")
flags.DEFINE_integer("num_steps", 5000, "Total training steps.")
flags.DEFINE_enum(
  "optimizer",
  "adam",
  ["gd", "sgd", "momentum", "adam", "adamw"],
  "gd: full-batch gradient descent; sgd: minibatch; momentum; adam; adamw.",
)
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
flags.DEFINE_enum(
  "schedule",
  "constant",
  ["constant", "cosine", "linear"],
  "Learning-rate decay after warm-up (to zero at --num_steps for cosine/linear).",
)
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps from 0 to --learning_rate.")
flags.DEFINE_float("momentum", 0.9, "Momentum for --optimizer=momentum.")
flags.DEFINE_float("b1", 0.9, "Adam beta1.")
flags.DEFINE_float("b2", 0.999, "Adam beta2.")
flags.DEFINE_float(
  "weight_decay", 0.0, "Decoupled weight decay (adamw) or L2 added to updates (others)."
)
flags.DEFINE_float("grad_clip", 0.0, "Clip gradients to this global norm; 0 turns clipping off.")
