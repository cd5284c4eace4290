"""Building blocks shared by the model families.

`Conv` and `ConvTranspose` are the convolution layers every dlu model uses. They are
`flax.linen.Conv`/`ConvTranspose` (same fields, parameter names and shapes, same
results), computed on CPU by the formulations of `fast_conv`, which XLA:CPU runs
several times faster; other backends keep the native ops.

Mixed precision: every model has a `dtype` field, the dtype of its activations, matmuls and
convolutions (flax's `dtype`); parameters stay float32 (flax's default `param_dtype`). A model casts
its inputs to `dtype` where they enter (`to_compute`) and its outputs back to float32
(`to_float32`), so losses, metrics and what the families compute from outputs (log-variances,
logits over a batch, Student-t kernels) are float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlu.models import fast_conv

# Read at trace time; False makes every backend use the native ops (to compare them).
FAST_CPU_CONV = True


def _pair(value: Any) -> tuple[int, ...]:
  if value is None:
    return (1, 1)
  return (value, value) if isinstance(value, int) else tuple(value)


def _fast_path_applies(
  inputs: jax.Array,
  kernel_hw: tuple[int, ...],
  strides: tuple[int, ...],
  dilations: Sequence[Any],
  padding: Any,
  mask: Any,
  precision: Any,
) -> bool:
  """The cases `fast_conv` covers (what dlu's models use); anything else stays native."""
  return (
    FAST_CPU_CONV
    and jax.default_backend() == "cpu"
    and inputs.ndim == 4
    and len(kernel_hw) == 2
    and len(strides) == 2
    and all(s in (1, 2) for s in strides)
    and all(_pair(d) == (1, 1) for d in dilations)
    and isinstance(padding, str)
    and padding == "SAME"
    and mask is None
    and precision is None
    and jnp.issubdtype(inputs.dtype, jnp.floating)
  )


# name -> (scale, mode, distribution): variance scale / fan(mode), as Keras and flax define
# them (lecun: 1 / fan_in; glorot: 2 / (fan_in + fan_out); he: 2 / fan_in); *_normal draws
# are truncated normals of that variance. mode None: a plain normal of variance `scale`
# whatever the shape (DCGAN's N(0, 0.02^2), Radford et al. 2016).
KERNEL_INITS: dict[str, tuple[float, str | None, str]] = {
  "glorot_uniform": (1.0, "fan_avg", "uniform"),
  "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
  "lecun_normal": (1.0, "fan_in", "truncated_normal"),
  "lecun_uniform": (1.0, "fan_in", "uniform"),
  "he_normal": (2.0, "fan_in", "truncated_normal"),
  "he_uniform": (2.0, "fan_in", "uniform"),
  "dcgan_normal": (0.02**2, None, "normal"),
}


def fans(shape: Sequence[int]) -> tuple[int, int]:
  """fan_in and fan_out of a kernel of `shape` (inputs on axis -2, outputs on axis -1, the
  receptive field on the others), as flax and Keras count them."""
  receptive = math.prod(shape[:-2])
  return shape[-2] * receptive, shape[-1] * receptive


@functools.cache
def kernel_init(name: str) -> Callable[..., jax.Array]:
  """The initializer `(key, shape, dtype) -> kernel` named `name` (a key of KERNEL_INITS).

  Drawn as a [prod(shape[:-1]), shape[-1]] matrix and reshaped, because XLA:CPU compiles a
  4-D truncated normal several times slower (it dominated the first-step time of small conv
  models); the variance is still that of the true shape's fans. For a 2-D shape, and for the
  fan_in modes at any rank, the values are flax's own (`nn.initializers.lecun_normal()`,
  `glorot_uniform()`, ...: same key, same values). ValueError for an unknown name.
  """
  if name not in KERNEL_INITS:
    raise ValueError(f"kernel_init must be one of {', '.join(KERNEL_INITS)}; got {name!r}")
  scale, mode, distribution = KERNEL_INITS[name]

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    shape = tuple(shape)
    flat = (math.prod(shape[:-1]), shape[-1])
    if mode is None:
      draw = nn.initializers.normal(math.sqrt(scale))
    elif len(shape) == 2 or mode == "fan_in":  # The flat matrix has the true shape's fan.
      draw = nn.initializers.variance_scaling(scale, mode, distribution)
    else:
      fan_in, fan_out = fans(shape)
      fan = {"fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
      draw = nn.initializers.variance_scaling(scale * flat[0] / fan, "fan_in", distribution)
    return draw(key, flat, dtype).reshape(shape)

  return init


def conv_kernel_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  """flax's default kernel init (lecun_normal), drawn as `kernel_init` draws (the same values
  as flax's 4-D draw: same fans, same key)."""
  return kernel_init("lecun_normal")(key, shape, dtype)


def _params(module: nn.Module, kernel_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array | None]:
  """`kernel` then `bias`, created exactly as flax creates them (same names, order and init)."""
  kernel = module.param("kernel", module.kernel_init, kernel_shape, module.param_dtype)
  bias = (
    module.param("bias", module.bias_init, (module.features,), module.param_dtype)
    if module.use_bias
    else None
  )
  return kernel, bias


class Conv(nn.Conv):
  """`flax.linen.Conv`; on CPU, a GEMM kernel gradient (see `fast_conv.conv2d`)."""

  kernel_init: Any = conv_kernel_init

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_hw, strides = _pair(self.kernel_size), _pair(self.strides)
    if self.feature_group_count != 1 or not _fast_path_applies(
      inputs,
      kernel_hw,
      strides,
      (self.input_dilation, self.kernel_dilation),
      self.padding,
      self.mask,
      self.precision,
    ):
      return super().__call__(inputs)
    kernel, bias = _params(self, kernel_hw + (inputs.shape[-1], self.features))
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    pads = fast_conv.same_pads(inputs.shape[1:3], kernel_hw, strides)
    y = fast_conv.conv(inputs, kernel, strides, pads)  # [B, Ho, Wo, features]
    return y if bias is None else y + bias


class ConvTranspose(nn.ConvTranspose):
  """`flax.linen.ConvTranspose`; on CPU, a GEMM kernel gradient (see `fast_conv.conv_transpose2d`)."""

  kernel_init: Any = conv_kernel_init

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_hw, strides = _pair(self.kernel_size), _pair(self.strides)
    if (
      self.transpose_kernel
      or self.preferred_element_type is not None
      or not _fast_path_applies(
        inputs, kernel_hw, strides, (self.kernel_dilation,), self.padding, self.mask, self.precision
      )
    ):
      return super().__call__(inputs)
    kernel, bias = _params(self, kernel_hw + (inputs.shape[-1], self.features))
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = fast_conv.conv_transpose2d(inputs, kernel, strides)  # [B, sh * H, sw * W, features]
    return y if bias is None else y + bias


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "relu": nn.relu,
  "leaky_relu": nn.leaky_relu,
  "gelu": nn.gelu,
  "tanh": jnp.tanh,
  "sigmoid": nn.sigmoid,
  "linear": lambda x: x,
}


def to_compute(x: jax.Array, dtype: Any) -> jax.Array:
  """A model's floating input in its compute dtype (integer inputs, e.g. labels, unchanged)."""
  return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def to_float32(x: jax.Array) -> jax.Array:
  """A model's output in float32, the dtype of losses and metrics."""
  return x.astype(jnp.float32)


def dropout(module: nn.Module, rate: float, x: jax.Array) -> jax.Array:
  """`nn.Dropout(rate)` of `x` when the module is applied with a `dropout` rng (training),
  `x` itself otherwise (evaluation) or when `rate` is 0."""
  if not rate:
    return x
  return nn.Dropout(rate, deterministic=not module.has_rng("dropout"))(x)


class MLP(nn.Module):
  """Dense layers with `activation` between them; `final_activation` after the last.
  `dropout`: the rate of dropout after each hidden layer (see `dropout`); `kernel_init`:
  the kernels' initializer (a key of KERNEL_INITS); `dtype`: the compute dtype of the layers
  and of the output (parameters float32)."""

  widths: Sequence[int]
  activation: str = "relu"
  final_activation: str = "linear"
  dropout: float = 0.0
  kernel_init: str = "glorot_uniform"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = to_compute(x, self.dtype)
    for i, width in enumerate(self.widths):
      x = nn.Dense(
        width,
        kernel_init=kernel_init(self.kernel_init),
        dtype=self.dtype,
        name=f"dense_{i}",
      )(x)
      last = i == len(self.widths) - 1
      x = ACTIVATIONS[self.final_activation if last else self.activation](x)
      if not last:
        x = dropout(self, self.dropout, x)
    return x


def _embed_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  """flax's embedding initializer, the last row (no level) zeros."""
  return nn.Embed.embedding_init(key, shape, dtype).at[-1].set(0)


class TableEmbedding(nn.Module):
  """A table row as the network reads it, with each many-level category embedded.

  The input is the row's `width` encoded columns (dlu.ops.tabular.model_input: one-hot
  categories, missing cells 0), then, when masked, their observed mask ([B, width] or
  [B, 2 * width]). Each `embedded` category, (start, stop, dim), its one-hot columns
  start:stop, becomes its level id, the hot column's index (levels = stop - start when none is
  hot: a missing cell, one hidden in training or a level first seen at apply time), looked up
  in an `nn.Embed` of levels + 1 rows of `dim` numbers. The last row starts at zeros, as
  one-hot reads a cell with no level (all zeros); it learns only where training sees such
  cells (missing or hidden ones under --impute=model). Out: the other columns, the
  embeddings, then the other columns' mask. [B, width - sum(levels) + sum(dim) (+ the mask)]
  """

  width: int
  embedded: Sequence[tuple[int, int, int]]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = self.width
    if x.shape[-1] not in (d, 2 * d):
      raise ValueError(f"TableEmbedding: {x.shape[-1]} input columns; expected {d} or {2 * d}")
    values = x[..., :d]
    keep = np.ones(d, bool)
    embeddings = []
    for i, (start, stop, dim) in enumerate(self.embedded):
      keep[start:stop] = False
      block = values[..., start:stop]
      levels = stop - start
      ids = jnp.where(jnp.sum(block, axis=-1) > 0.5, jnp.argmax(block, axis=-1), levels)
      embed = nn.Embed(
        levels + 1, dim, dtype=self.dtype, embedding_init=_embed_init, name=f"embed_{i}"
      )
      embeddings.append(embed(ids))
    rest = np.flatnonzero(keep)
    parts = [to_compute(values[..., rest], self.dtype), *embeddings]
    if x.shape[-1] == 2 * d:
      parts.append(to_compute(x[..., d:][..., rest], self.dtype))
    return jnp.concatenate(parts, axis=-1)
