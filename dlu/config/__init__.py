"""A run's configuration: `Config`, the values of every flag dlu defines, and how it is read
(from absl's flags, a flagfile such as a run's flags.txt, or keyword overrides) and checked.

The run's own flags are defined here, one module per concern: `data_flags` (the model's name
and its data), `optim_flags` (the optimisation), `run_flags` (schedules, devices, selection,
resuming); `model_flags` holds the model flags several families share. A family's own flags
live in its module under `dlu/families/`, an evaluator's beside it in `dlu/evaluators/`, and
launch flags (coordinator, verbosity) in `dlu/runtime/`. A `Config` holds the values of every
flag defined by the dlu modules imported so far (`dlu.train.experiment` imports them all), so
library code and tests never read the global absl state. Nothing here knows the families.
"""

from __future__ import annotations

import os
import types
from typing import Any

from absl import flags

from dlu import files
from dlu.config import data_flags, optim_flags, run_flags  # noqa: F401  (define the run's flags)
from dlu.errors import UsageError

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
_LAUNCH_MODULES = ("dlu.runtime.distributed", "dlu.runtime.cli", "dlu.runtime.compilation_cache")


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
  """The default configuration with `overrides` applied: for tests and notebooks. A string
  given for a flag that is not one (a list, a number, a boolean) is read as the command line
  reads it: `widths="64,32"` is [64, 32] as `--widths=64,32` is, never a list of characters."""
  defaults = {name: flags.FLAGS[name].default for name in _all_flag_values(flags.FLAGS)}
  for name, value in overrides.items():
    if name not in defaults or not isinstance(value, str):
      continue
    flag = flags.FLAGS[name]
    if isinstance(flag.default, str) or (flag.default is None and flag.flag_type() == "string"):
      continue
    try:
      overrides[name] = flag.parser.parse(value)
    except (ValueError, TypeError) as e:
      raise UsageError(f"{name}={value!r}: {e}") from None
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


def profile_window(cfg: Config) -> tuple[int, int]:
  """(first step, number of steps) that --profile_steps asks to trace (N: after the first
  --log_every steps; START:N); (0, 0) when off. UsageError on anything else."""
  value = str(cfg.profile_steps).strip()
  start, colon, count = value.rpartition(":")
  try:
    n = int(count)
    first = int(start) if colon else min(cfg.log_every, cfg.num_steps)
  except ValueError:
    first = n = -1
  if n < 0 or first < 0:
    raise UsageError(f"--profile_steps must be N or START:N (integers >= 0), got {value!r}")
  return (first, n) if n else (0, 0)


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
  profile_window(cfg)
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
  text = files.read_text(path, "the flags.txt of a dlu run")
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
