"""Model flags that several families (and the evaluators) read, with their parsers.

A family's own flags live in its module under `dlu/families/`; the ones here are shared:
the code size, the MLP widths and conv channels of the encoders (autoencoders, VAEs,
SimCLR), the kernels' initializer and the compute dtype (every model), and the number of
clusters (DEC/IDEC, the contrastive cluster head, and the clustering evaluator).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from absl import flags

from dlu.config import Config, require_positive
from dlu.errors import UsageError
from dlu.models.autoencoder import conv_compatible
from dlu.models.layers import KERNEL_INITS

flags.DEFINE_integer("latent_dim", 32, "Size of the code (ae_mlp, ae_conv and later families).")
flags.DEFINE_list(
  "widths", ["512", "256"], "ae_mlp, vae, svdd_mlp: encoder widths (the decoder mirrors them)."
)
flags.DEFINE_list(
  "conv_channels",
  ["32", "64"],
  "ae_conv, conv_vae, geom_conv: channels of the strided conv layers.",
)
flags.DEFINE_float(
  "dropout",
  0.0,
  "ae_seed, ae_mlp, ae_conv: dropout rate after every hidden layer of the encoder and "
  "decoder (the code included), in training only; 0: none.",
)
# The initialiser of each model under --kernel_init=auto, chosen by measurement: the quality at
# equal steps of `scripts/benchmark.py` (docs/models.md, "Initialisers"); models not named get
# glorot_uniform. (DEC and IDEC start from an autoencoder run, built by its own flags.)
KERNEL_INIT_BY_MODEL = {"ae_mlp": "lecun_normal", "ae_conv": "lecun_normal"}
KERNEL_INIT_CHOICES = ("auto", *KERNEL_INITS)
flags.DEFINE_enum(
  "kernel_init",
  "auto",
  list(KERNEL_INIT_CHOICES),
  "Initializer of every Dense and conv kernel of the model (biases start at 0). auto: the one "
  "measured best for the model (lecun_normal for ae_mlp and ae_conv, glorot_uniform for the "
  "others); "
  "glorot_uniform (Keras's default, variance 2 / (fan_in + fan_out)), glorot_normal, "
  "lecun_normal (flax's default, 1 / fan_in), lecun_uniform, he_normal (2 / fan_in), "
  "he_uniform, dcgan_normal (N(0, 0.02^2)); *_normal are truncated normals.",
)
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
flags.DEFINE_enum(
  "compute_dtype",
  "float32",
  list(COMPUTE_DTYPES),
  "dtype of the model's activations, matmuls and convolutions (every model). bfloat16: mixed "
  "precision for accelerators; parameters, optimizer state, losses, metrics and BatchNorm "
  "statistics stay float32. On CPU bfloat16 is usually slower.",
)
flags.DEFINE_integer(
  "n_clusters", 0, "Clusters for dec/idec and experiments.evaluate; 0: the dataset's class count."
)
flags.DEFINE_integer(
  "kmeans_inits",
  10,
  "k-means restarts (best inertia kept), for DEC's centroids and experiments.evaluate.",
)


def int_list(cfg_value: Sequence[str], flag: str) -> tuple[int, ...]:
  """A list flag's values as positive integers; UsageError naming `flag` otherwise."""
  try:
    values = tuple(int(v) for v in cfg_value)
  except (TypeError, ValueError):
    values = ()
  if not values or min(values) < 1:
    raise UsageError(
      f"--{flag} must be a comma-separated list of positive integers, got {cfg_value!r}"
    )
  return values


def conv_channels(cfg: Config, shape: tuple[int, int, int]) -> tuple[int, ...]:
  """--conv_channels, checked against the image: each strided layer halves height and width."""
  channels = int_list(cfg.conv_channels, "conv_channels")
  if not conv_compatible(shape, len(channels)):
    raise UsageError(
      f"--model={cfg.model} with {len(channels)} strided layers (--conv_channels) "
      f"needs image height and width divisible by {2 ** len(channels)}; "
      f"the data has {shape[0]}x{shape[1]}"
    )
  return channels


def num_clusters(cfg: Config, num_classes: int | None, dataset_name: str = "the data") -> int:
  """--n_clusters, or the class count when it is 0; UsageError when there is neither."""
  if cfg.n_clusters:
    return cfg.n_clusters
  if not num_classes:
    raise UsageError(f"--n_clusters is needed: {dataset_name} has no labels to count classes from")
  return num_classes


def kernel_init_name(cfg: Config) -> str:
  """The initialiser --kernel_init names for --model (auto: KERNEL_INIT_BY_MODEL), a key of
  `layers.KERNEL_INITS`. Resolved once per family (`Family.kernel_init`); the value was
  checked with the other enum flags by `dlu.config.validate`."""
  if cfg.kernel_init == "auto":
    return KERNEL_INIT_BY_MODEL.get(cfg.model, "glorot_uniform")
  return cfg.kernel_init


def compute_dtype(cfg: Config) -> jnp.dtype:
  """The dtype --compute_dtype names (checked with the other enum flags by
  `dlu.config.validate`). Resolved once per family (`Family.compute_dtype`)."""
  return jnp.dtype(COMPUTE_DTYPES[cfg.compute_dtype])


def validate(cfg: Config) -> None:
  """The shared flags every family may read; each family checks the encoder flags it uses.
  Enum flags (--kernel_init and --compute_dtype among them) are checked once, with every other, by
  `dlu.config.validate`."""
  if cfg.n_clusters < 0:
    raise UsageError(f"--n_clusters must be >= 0 (0: the class count), got {cfg.n_clusters!r}")
  require_positive(cfg, "kmeans_inits")
  if not 0 <= cfg.dropout < 1:
    raise UsageError(f"--dropout must be in [0, 1), got {cfg.dropout!r}")
