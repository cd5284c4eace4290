"""Model families by `--model` name. Importing this package registers them all."""

from dlu.families.base import (Batch, DataSpec, EvalContext, Family, Metrics, SingleNetworkFamily,  # noqa: F401
                               TrainState, get, names, register)
from dlu.families import autoencoder  # noqa: F401,E402
from dlu.families import contrastive  # noqa: F401,E402
from dlu.families import dec  # noqa: F401,E402
from dlu.families import gan  # noqa: F401,E402
from dlu.families import vae  # noqa: F401,E402
