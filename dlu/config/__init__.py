"""Flags of every run (model, data, optimisation, schedule), and the Config built from them.

Other flags live beside the code that reads them: model flags shared by several families in
`dlu.config.model_flags`, a family's own in its module under `dlu/families/`, evaluators' in
`dlu/evaluators/`. A `Config` holds the values of every flag defined by the dlu modules
imported so far (`dlu.train.experiment` imports them all), so library code and tests never read
the global absl state. Nothing here knows the families.
"""

from __future__ import annotations

import os
import types
from typing import Any

from absl import flags

from dlu.errors import UsageError

#: Metrics where higher is better (early stopping, the best checkpoint, sweeps); the leaf
#: name of a nested metric counts (`probes/linear_probe_acc` ends in `acc`).
HIGHER_IS_BETTER = ("psnr", "acc", "nmi", "ari", "accuracy", "recall", "precision", "elbo")


def higher_is_better(metric: str) -> bool:
  leaf = metric.rsplit("/", 1)[-1]
  return any(leaf == m or leaf.endswith("_" + m) for m in HIGHER_IS_BETTER)


# --- Model and data.
flags.DEFINE_string("model", "ae_seed", "Model name; see dlu.families.names().")
flags.DEFINE_string(
  "dataset",
  "fashion_mnist",
  "digits | fashion_mnist | mnist | cifar10 | any tfds image dataset | npz:PATH (images "
  "[N, H, W(, C)] or vectors [N, D]) | folder:DIR | csv:PATH | parquet:PATH.",
)
flags.DEFINE_string(
  "data_dir", None, "tfds data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
flags.DEFINE_string(
  "idx_dir", None, "Folder of Fashion-MNIST IDX files used to prepare the dataset offline."
)
flags.DEFINE_enum(
  "pixel_range", "unit", ["unit", "symmetric"], "Pixels scaled to [0, 1] (unit) or [-1, 1]."
)
# Tables (csv:, parquet:) and vectors (npz: with x [N, D]).
flags.DEFINE_string(
  "label_column",
  None,
  "csv/parquet: the column holding labels (they only score clusterings, fit probes and "
  "condition GANs; never a feature). Default: unlabelled.",
)
flags.DEFINE_float(
  "test_fraction",
  0.1,
  "Tables and vectors without a test split: the fraction of rows held out for it (the same "
  "rows for a given --seed).",
)
flags.DEFINE_enum(
  "impute",
  "none",
  ["none", "mean", "median"],
  "Tables: fill missing cells with the training split's column mean or median; none: "
  "missing cells are an error.",
)
flags.DEFINE_enum(
  "feature_scaling",
  "standard",
  ["standard", "minmax", "none"],
  "Tables and vectors: standard (zero mean, unit variance) or minmax ([0, 1]) per column, "
  "from the training split only; kept in WORKDIR/preprocessing.json.",
)
flags.DEFINE_float(
  "validation_fraction",
  0.1,
  "Fraction of the training split held out for validation (the same rows for a given --seed, "
  "never trained on) when the dataset has no validation split of its own; evals during "
  "training score it, the test split is scored once, at the end. 0: no validation split "
  "(evals during training then score the test split).",
)
flags.DEFINE_string(
  "class_balance",
  None,
  "Labelled data: train on a class-imbalanced subset of the training split, the same rows for "
  "a given --seed. longtail:R (exponential profile, R:1 between class 0 and the last class) "
  "or counts:N0,N1,... (examples of each class). Default: the whole split.",
)

# --- Optimisation.
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

# --- Run.
flags.DEFINE_integer("seed", 0, "Root seed: parameters, data order and noise all derive from it.")
flags.DEFINE_integer(
  "eval_every",
  1000,
  "Evaluate on the validation split every N steps (and at the end, the test split too).",
)
flags.DEFINE_integer("log_every", 100, "Log train metrics every N steps.")
flags.DEFINE_integer("checkpoint_every", 1000, "Save a checkpoint every N steps (and at the end).")
flags.DEFINE_integer("keep_checkpoints", 3, "How many checkpoints to keep.")
flags.DEFINE_integer("eval_batch_size", 1000, "Batch size for evaluation.")
flags.DEFINE_integer("num_images", 64, "Images in each saved grid.")
flags.DEFINE_enum(
  "parallelism",
  "jit",
  ["jit", "pmap"],
  "jit: one program over a ('data',) mesh; pmap: jax.pmap with pmean of gradients.",
)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, event files and images go.")
flags.DEFINE_integer(
  "steps_per_dispatch",
  1,
  "Training steps per jitted dispatch (a lax.scan over K steps on batches gathered "
  "in device memory); logging, eval and checkpoints happen between dispatches.",
)
flags.DEFINE_enum(
  "input_pipeline",
  "auto",
  ["auto", "device", "host", "stream"],
  "How training batches reach the devices. device: the training split in device memory, batches "
  "gathered there; host: batches gathered in host memory; stream: Grain reads each batch from "
  "rows on disk (records:, npy:) or in memory, in --data_workers processes, prefetched onto the "
  "devices. auto: device when the split fits 2 GiB (rows on disk: also a quarter of host memory), "
  "stream for larger rows on disk, host for larger splits in memory. All give the same batches.",
)
flags.DEFINE_integer(
  "data_workers",
  0,
  "--input_pipeline=stream: processes that read and decode batches (0: threads of the "
  "training process).",
)
flags.DEFINE_integer(
  "profile_steps",
  0,
  "Trace this many training steps with the JAX profiler, after the first --log_every steps "
  "(compilation done), into WORKDIR/plugins/profile for TensorBoard's profile plugin; 0: off.",
)
flags.DEFINE_string(
  "early_stopping_metric",
  None,
  "Stop training when this metric of the validation rows (e.g. mse, loss; a name of the "
  "eval rows, `a/b` for nested ones) has not improved for --early_stopping_patience evals. "
  "Lower is better unless it is one of: " + ", ".join(HIGHER_IS_BETTER) + ". Default: off.",
)
flags.DEFINE_integer(
  "early_stopping_patience", 5, "Evals without improvement before early stopping stops."
)
flags.DEFINE_float(
  "early_stopping_min_delta",
  0.0,
  "Smallest change of --early_stopping_metric that counts as an improvement.",
)
flags.DEFINE_string(
  "keep_best_checkpoint",
  None,
  "Also keep the checkpoint with the best value of this validation metric (direction as for "
  "--early_stopping_metric), in WORKDIR/checkpoints_best; experiments.evaluate and "
  "experiments.apply load it by default. Default: off.",
)
flags.DEFINE_string(
  "checkpoint",
  "best",
  "The checkpoint a trained run is loaded from (experiments.evaluate, experiments.apply, "
  "dlu.load_run): best (the --keep_best_checkpoint one, else the latest), latest, or a step.",
)
flags.DEFINE_bool(
  "debug_nans", False, "Turn on JAX NaN checking to find the operation that makes one."
)

flags.DEFINE_bool(
  "allow_flag_changes",
  False,
  "Resume a workdir whose flags.txt records other run-defining flags (seed, data, model, "
  "optimizer, ...): without it such a rerun is refused. flags.txt keeps the changes as comments.",
)
flags.DEFINE_enum(
  "resume_from",
  "latest",
  ["latest", "last_intact"],
  "latest: resume from the newest checkpoint (a damaged one stops the run); last_intact: from "
  "the newest one that passes its checksums, moving the damaged ones to "
  "WORKDIR/corrupt_checkpoints.",
)

_POSITIVE_INTS = (
  "batch_size",
  "num_steps",
  "eval_every",
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "eval_batch_size",
  "num_images",
  "steps_per_dispatch",
)
_NON_NEGATIVE = (
  "warmup_steps",
  "weight_decay",
  "grad_clip",
  "profile_steps",
  "data_workers",
  "early_stopping_min_delta",
)


class Config(types.SimpleNamespace):
  """A read-only snapshot of flag values with attribute access."""

  def replace(self, **changes: Any) -> Config:
    unknown = sorted(set(changes) - set(vars(self)))
    if unknown:
      raise UsageError(f"unknown flag(s): {', '.join('--' + k for k in unknown)}")
    return Config(**{**vars(self), **changes})

  def to_flagfile(self) -> str:
    """One `--name=value` line per flag: a flagfile that reproduces the run."""
    lines = []
    for name, value in sorted(vars(self).items()):
      if value is None:
        continue
      if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
      lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"


# Flags of how a process is launched (coordinator, verbosity): not part of a run.
_LAUNCH_MODULES = ("dlu.runtime.distributed", "dlu.runtime.cli")


def _all_flag_values(flag_values: flags.FlagValues) -> dict[str, Any]:
  # Only the flags the library defines: absl's own (logtostderr, ...) are not part of a run,
  # nor are the tools' own (experiments.apply's --input, prepare_data's --skip_bad, ...), which
  # a process that imported them would otherwise record. Process-launch flags differ per
  # process and are not part of a run.
  names = {
    f.name
    for module, fl in flag_values.flags_by_module_dict().items()
    if module.startswith("dlu.") and module not in _LAUNCH_MODULES
    for f in fl
  }
  return {name: flag_values[name].value for name in sorted(names)}


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Config:
  return Config(**_all_flag_values(flag_values))


def make_config(**overrides: Any) -> Config:
  """The default configuration with `overrides` applied: for tests and notebooks."""
  defaults = {name: flags.FLAGS[name].default for name in _all_flag_values(flags.FLAGS)}
  return Config(**defaults).replace(**overrides)


def require_positive(cfg: Config, *names: str) -> None:
  """UsageError unless each flag `names` holds an integer >= 1."""
  for name in names:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UsageError(f"--{name} must be a positive integer, got {value!r}")


def require_non_negative(cfg: Config, *names: str) -> None:
  """UsageError unless each flag `names` holds a number >= 0."""
  for name in names:
    value = getattr(cfg, name)
    if not value >= 0:
      raise UsageError(f"--{name} must be >= 0, got {value!r}")


def require_fraction(cfg: Config, *names: str) -> None:
  """UsageError unless each flag `names` holds a number in [0, 1)."""
  for name in names:
    value = getattr(cfg, name)
    if not 0 <= value < 1:
      raise UsageError(f"--{name} must be in [0, 1), got {value!r}")


def require_above_zero(cfg: Config, *names: str) -> None:
  """UsageError unless each flag `names` holds a number > 0."""
  for name in names:
    value = getattr(cfg, name)
    if not value > 0:
      raise UsageError(f"--{name} must be > 0, got {value!r}")


def validate(cfg: Config) -> None:
  """Raise UsageError naming the first run flag whose value cannot work.

  The model's own flags are checked by `dlu.families.validate`, which calls this first.
  """
  require_positive(cfg, *_POSITIVE_INTS)
  require_non_negative(cfg, *_NON_NEGATIVE)
  require_above_zero(cfg, "learning_rate")
  require_fraction(cfg, "momentum", "b1", "b2")
  require_fraction(cfg, "validation_fraction")
  require_positive(cfg, "early_stopping_patience")
  checkpoint = str(cfg.checkpoint)
  if checkpoint not in ("best", "latest") and not checkpoint.isdigit():
    raise UsageError(f"--checkpoint must be best, latest or a step, got {cfg.checkpoint!r}")
  if not 0 < cfg.test_fraction < 1:
    raise UsageError(f"--test_fraction must be in (0, 1), got {cfg.test_fraction!r}")
  if cfg.warmup_steps >= cfg.num_steps and cfg.warmup_steps > 0:
    raise UsageError(
      f"--warmup_steps ({cfg.warmup_steps}) must be smaller than --num_steps ({cfg.num_steps})"
    )
  for name, value in sorted(vars(cfg).items()):  # Every enum flag, the families' too.
    accepted = (
      getattr(flags.FLAGS[name].parser, "enum_values", None) if name in flags.FLAGS else None
    )
    if accepted and value not in accepted:
      raise UsageError(f"--{name} must be one of {', '.join(accepted)}; got {value!r}")


def config_from_flagfile(path: str, **overrides: Any) -> Config:
  """The Config a run's `flags.txt` (or any flagfile) records, with `overrides` applied."""
  if not os.path.isfile(path):
    raise UsageError(f"{path} does not exist: expected the flags.txt of a dlu run")
  try:
    with open(path, "rb") as f:
      text = f.read().decode("utf-8")
  except OSError as e:
    raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
  except UnicodeDecodeError as e:
    raise UsageError(
      f"{path} is not UTF-8 text (byte {e.start}): expected the flags.txt of a dlu run"
    ) from None
  values = {}
  defined = _all_flag_values(flags.FLAGS)
  for line in text.splitlines():
    line = line.strip()
    if not line.startswith("--"):
      continue
    name, eq, value = line[2:].partition("=")
    if not eq:  # A bare boolean, as absl reads it: --flag or --noflag.
      if name.startswith("no") and name not in defined and name[2:] in defined:
        name, value = name[2:], "false"
      else:
        value = "true"
      if name in defined and not flags.FLAGS[name].boolean:
        raise UsageError(f"{path}: --{name} needs a value (--{name}=...)")
    if name not in defined:
      raise UsageError(f"{path}: unknown flag --{name}")
    try:
      values[name] = flags.FLAGS[name]._parse(value)  # pylint: disable=protected-access
    except (ValueError, flags.Error) as e:
      raise UsageError(f"{path}: bad value for --{name}: {e}") from None
  return make_config(**values).replace(**overrides)
