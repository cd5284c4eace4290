"""Model families by `--model` name. Importing this package registers them all (and defines
their flags); `validate` checks a Config's run, shared and family flags."""

from dlu import config as _flags
from dlu.config import model_flags as _model_flags
from dlu.families import (  # noqa: F401  (registers them)
  autoencoder,
  contrastive,
  dec,
  gain,
  gan,
  geom,
  sequence,
  sequence_contrastive,
  sequence_vae,
  svdd,
  text,
  text_contrastive,
  vae,
)
from dlu.families.base import (  # noqa: F401
  Batch,
  DataSpec,
  EvalContext,
  Family,
  Metrics,
  SingleNetworkFamily,
  TrainState,
  get,
  names,
  register,
)


def validate(cfg: _flags.Config) -> None:
  """Raise UsageError naming the first flag of `cfg` whose value cannot work."""
  _flags.validate(cfg)
  _model_flags.validate(cfg)
  get(cfg.model).validate(cfg)
