"""dlu: deep learning, unsupervised. Autoencoders, VAEs, GANs and deep clustering in JAX.

import dlu
run = dlu.load_run("workdirs/ae")   # a trained run, applied to new data (see dlu.train.apply)
"""

__version__ = "0.1.0"


def load_run(workdir: str, **overrides):
  """The run trained in `workdir`, ready for new data: `dlu.train.apply.load_run`."""
  from dlu.train.apply import load_run as _load_run  # noqa: PLC0415  (imports JAX: only when used)

  return _load_run(workdir, **overrides)
