"""Building blocks shared by the model families.

`Conv` and `ConvTranspose` are the convolution layers every dlu model uses, so a
faster formulation for one backend replaces them in one place.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Conv = nn.Conv
ConvTranspose = nn.ConvTranspose

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "leaky_relu": nn.leaky_relu, "gelu": nn.gelu, "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid, "linear": lambda x: x,
}


class MLP(nn.Module):
  """Dense layers with `activation` between them; `final_activation` after the last."""
  widths: Sequence[int]
  activation: str = "relu"
  final_activation: str = "linear"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = nn.Dense(width, name=f"dense_{i}")(x)
      last = i == len(self.widths) - 1
      x = ACTIVATIONS[self.final_activation if last else self.activation](x)
    return x
