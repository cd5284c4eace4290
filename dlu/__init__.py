"""dlu: deep learning, unsupervised. Autoencoders, VAEs, GANs and deep clustering in JAX.

    import dlu
    run = dlu.load_run("workdirs/ae")           # a trained run, applied to new data
    z, scores = run.encode(x), run.score(x)
    cfg = dlu.make_config(model="ae_mlp", dataset="digits", num_steps=500)
    dlu.train_and_evaluate(cfg, "workdirs/ae_mlp")
    dlu.evaluate_workdir("workdirs/ae_mlp")

The package is layered (docs/architecture.md): `dlu.ops` (pure functions), `dlu.models`
(Flax modules), `dlu.config`, `dlu.runtime` (devices, checkpoints, writers), `dlu.data`,
`dlu.metrics`, `dlu.families`, `dlu.evaluators`, `dlu.train` (the loop, evaluate, apply) and
`dlu.studies`. The names below are loaded when first used, so `import dlu` imports no JAX.
"""

import importlib

__version__ = "0.1.0"

# name -> the module that defines it.
_PUBLIC = {
  "load_run": "dlu.train.apply",
  "Run": "dlu.train.apply",
  "train_and_evaluate": "dlu.train.loop",
  "evaluate_workdir": "dlu.train.evaluate",
  "Config": "dlu.config",
  "make_config": "dlu.config",
  "config_from_flagfile": "dlu.config",
  "UsageError": "dlu.errors",
  "RunFailure": "dlu.errors",
}

__all__ = sorted(_PUBLIC)

# A Config holds the flags of the modules imported so far; the public one knows every flag
# (each family's and evaluator's too), which importing the experiment builder defines.
_NEEDS_EVERY_FLAG = {"Config", "make_config", "config_from_flagfile"}


def __getattr__(name: str):
  if name in _PUBLIC:
    if name in _NEEDS_EVERY_FLAG:
      importlib.import_module("dlu.train.experiment")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  raise AttributeError(f"module 'dlu' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_PUBLIC))
