"""Deep SVDD's encoder (Ruff et al. 2018): Dense layers without bias terms, so that a
constant map to the centre is out of reach (the "hypersphere collapse" the paper rules out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlu.models.layers import ACTIVATIONS, kernel_init, to_compute, to_float32


class SVDDEncoder(nn.Module):
  """Flattened input -> widths (leaky ReLU, no bias) -> a linear code of `latent_dim`. [B, D]"""

  widths: Sequence[int] = (512, 256)
  latent_dim: int = 32
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = to_compute(x.reshape((x.shape[0], -1)), self.dtype)
    for i, width in enumerate(tuple(self.widths) + (self.latent_dim,)):
      x = nn.Dense(
        width,
        use_bias=False,
        kernel_init=kernel_init(self.kernel_init),
        dtype=self.dtype,
        name=f"dense_{i}",
      )(x)
      if i < len(self.widths):
        x = ACTIVATIONS["leaky_relu"](x)
    return to_float32(x)
