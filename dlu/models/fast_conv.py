"""Convolutions that XLA:CPU runs fast, computing exactly what `lax` convolutions compute.

XLA:CPU's forward convolutions and input gradients are reasonable, but its kernel
(weight) gradients are 10-20x slower than a matrix product of the same size. So:

- `conv2d` keeps XLA's convolution for the forward pass and the input gradient and
  computes the kernel gradient as `patches^T @ grad_out`, one GEMM per chunk of the
  batch (each chunk's patch matrix small enough to stay in cache), summed in a scan.
  `conv` uses it for stride-1 convs and strided ones from few channels; XLA's kernel
  gradient of strided convs from many channels is as fast (`strided_conv2d`, whose
  input gradient, a transposed conv, runs by output phases from 64 channels up).
- `conv_transpose2d` keeps XLA's input gradient and computes the kernel gradient as a
  GEMM of the input against the output gradient's strided patches (XLA runs it as a
  convolution over a dilated input: 20-40x slower). Strided ones to many channels run
  their forward pass as one stride-1 conv per output phase (`conv_transpose_phases`),
  ~2x faster than XLA's; the sub-pixel form (one stride-1 conv to s*s*C_out
  channels, zero taps included, then depth-to-space) was measured 1.1-1.7x slower.
- `narrow_conv2d`: stride-1 convs to a few channels (an image output layer) as GEMMs on
  the output side, since XLA's own run at a few GFLOP/s there.

Layouts are NHWC inputs and HWIO kernels, as in `flax.linen.Conv`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Patch matrices of about this many bytes per GEMM fit in the caches of a CPU core.
PATCH_CHUNK_BYTES = 4 << 20
# Strided convs from this many input channels up keep XLA's kernel gradient (measured as
# fast as the GEMM, or faster); from fewer (image inputs) the GEMM is 1.3-3x faster.
NATIVE_STRIDED_MIN_CIN = 16
# Strided transposed convs to this many output channels up run their forward pass per
# output phase: ~2x faster than XLA's on 2 cores; to fewer (an image output layer) XLA's
# own is faster (3x).
PHASE_MIN_COUT = 16
# The input gradients of strided convs (transposed convs) from this many input channels
# up, likewise: 2x faster for 64 -> 128 channels, 1.3x slower for 32 -> 64 at 14 -> 7.
PHASE_INPUT_GRAD_MIN_CIN = 64


def same_pads(in_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int]) -> Pads:
  """lax's "SAME" padding of a forward convolution, per spatial dimension."""
  return tuple(lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), tuple(strides), "SAME"))


def _native(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DIMENSION_NUMBERS)


def _patches(
  xp: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int]
) -> jax.Array:
  """[b, Hp, Wp, C] padded input -> [b * Ho * Wo, kh * kw * C], columns ordered like HWIO."""
  (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, out_hw
  cols = [
    xp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
    for i in range(kh)
    for j in range(kw)
  ]
  return jnp.concatenate(cols, axis=-1).reshape(-1, kh * kw * xp.shape[-1])


def _chunk_size(batch: int, bytes_per_example: int) -> int:
  """Examples per GEMM: patches of about PATCH_CHUNK_BYTES, a divisor of the batch if one is
  close (one program for the scan body, none for a remainder: faster to compile)."""
  target = int(max(1, min(batch, PATCH_CHUNK_BYTES // bytes_per_example)))
  divisor = max(d for d in range(1, target + 1) if batch % d == 0)
  return divisor if 2 * divisor >= target else target


def kernel_grad(
  x: jax.Array, g: jax.Array, kernel_shape: Sequence[int], strides: tuple[int, int], pads: Pads
) -> jax.Array:
  """d(loss)/d(kernel) of `_native(x, kernel, strides, pads)` given g = d(loss)/d(output).

  x: [B, H, W, Cin]; g: [B, Ho, Wo, Cout]; returns [kh, kw, Cin, Cout]. `pads` may be
  negative at the end (rows no window reads).
  """
  kh, kw, cin, cout = kernel_shape
  batch, ho, wo, _ = g.shape
  # Pad to exactly the rows and columns the windows read.
  hi = [
    s * (o - 1) + k - n - lo
    for s, o, k, n, (lo, _) in zip(strides, (ho, wo), (kh, kw), x.shape[1:3], pads)
  ]
  xp = lax.pad(
    x,
    jnp.zeros((), x.dtype),
    ((0, 0, 0), (pads[0][0], hi[0], 0), (pads[1][0], hi[1], 0), (0, 0, 0)),
  )

  def gemm(xc, gc):  # [b, Hp, Wp, Cin], [b, Ho, Wo, Cout] -> [kh*kw*Cin, Cout]
    p = _patches(xc, (kh, kw), strides, (ho, wo))
    return lax.dot_general(
      p, gc.reshape(-1, cout), (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )

  chunk = _chunk_size(batch, ho * wo * kh * kw * cin * 4)
  full = batch // chunk
  dw = jnp.zeros((kh * kw * cin, cout), jnp.float32)
  if full > 1:

    def body(acc, xs):
      return acc + gemm(*xs), None

    split = lambda a: a[: full * chunk].reshape((full, chunk) + a.shape[1:])
    dw, _ = lax.scan(body, dw, (split(xp), split(g)))
  elif full == 1:
    dw = gemm(xp[:chunk], g[:chunk])
  if batch > full * chunk:
    dw = dw + gemm(xp[full * chunk :], g[full * chunk :])
  return dw.reshape(kh, kw, cin, cout).astype(x.dtype)


def _shifted_sum(z: jax.Array, pads: Pads, out_hw: tuple[int, int]) -> jax.Array:
  """out[p] = sum_t z[p + t - lo, t]: [B, H, W, kh, kw, C] -> [B, Ho, Wo, C] (stride 1)."""
  _, h, w, kh, kw, _ = z.shape
  (lo_h, _), (lo_w, _) = pads
  zero = jnp.zeros((), z.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      # Rows p + i - lo_h of z, zero where outside: a (possibly negative) pad.
      term = lax.pad(
        z[:, :, :, i, j],
        zero,
        (
          (0, 0, 0),
          (lo_h - i, out_hw[0] - h - lo_h + i, 0),
          (lo_w - j, out_hw[1] - w - lo_w + j, 0),
          (0, 0, 0),
        ),
      )
      out = term if out is None else out + term
  return out


def narrow_output(kernel_shape: Sequence[int], strides: Sequence[int]) -> bool:
  """Stride-1 convs to few channels: cheaper as one GEMM then a sum of shifted slices."""
  kh, kw, cin, cout = kernel_shape
  return tuple(strides) == (1, 1) and 4 * cout <= cin and kh * kw * cout <= 64


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def narrow_conv2d(x: jax.Array, w: jax.Array, pads: Pads) -> jax.Array:
  """A stride-1 `_native(x, w, (1, 1), pads)` for small Cout, with GEMMs on the output side.

  XLA's own convolution (and its gradients) to one or a few channels runs at a few
  GFLOP/s; here every pass reads the input once: [B, H, W, Cin] -> [B, Ho, Wo, Cout].
  """
  kh, kw, cin, cout = w.shape
  z = x.reshape(-1, cin) @ w.transpose(2, 0, 1, 3).reshape(cin, -1)  # [B*H*W, kh*kw*Cout]
  out_hw = tuple(n + lo + hi - k + 1 for n, (lo, hi), k in zip(x.shape[1:3], pads, (kh, kw)))
  return _shifted_sum(z.reshape(x.shape[:3] + (kh, kw, cout)), pads, out_hw)


def _narrow_fwd(x, w, pads):
  return narrow_conv2d(x, w, pads), (x, w)


def _narrow_bwd(pads, res, g):
  x, w = res
  kh, kw, cin, cout = w.shape
  (_, h, wd, _), zero = x.shape, jnp.zeros((), g.dtype)
  # cols[q, t] = g[q - t + lo]: the output positions that input position q fed through tap t.
  cols = []
  for i in range(kh):
    for j in range(kw):
      lo_h, lo_w = pads[0][0] - i, pads[1][0] - j
      cols.append(
        lax.pad(
          g,
          zero,
          (
            (0, 0, 0),
            (-lo_h, h - g.shape[1] + lo_h, 0),
            (-lo_w, wd - g.shape[2] + lo_w, 0),
            (0, 0, 0),
          ),
        )
      )
  cols = jnp.stack(cols, axis=3).reshape(-1, kh * kw * cout)  # [B*H*W, kh*kw*Cout]
  w_t = w.transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)
  dx = (cols @ w_t).reshape(x.shape)
  dw = lax.dot_general(
    x.reshape(-1, cin), cols, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
  )  # [Cin, kh*kw*Cout]
  dw = dw.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3).astype(w.dtype)
  return dx, dw


narrow_conv2d.defvjp(_narrow_fwd, _narrow_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
  """`lax.conv_general_dilated` (NHWC, HWIO) with a GEMM kernel gradient. [B, Ho, Wo, Cout]"""
  return _native(x, w, strides, pads)


def _conv2d_fwd(x, w, strides, pads):
  return _native(x, w, strides, pads), (x, w)


def _conv2d_bwd(strides, pads, res, g):
  x, w = res
  _, input_vjp = jax.vjp(lambda x: _native(x, w, strides, pads), x)
  return input_vjp(g)[0], kernel_grad(x, g, w.shape, strides, pads)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def strided_conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
  """`_native` with XLA's kernel gradient and, to many input channels, the input gradient
  by phases (`strided_conv_input_grad`)."""
  return _native(x, w, strides, pads)


def _strided_conv2d_fwd(x, w, strides, pads):
  return _native(x, w, strides, pads), (x, w)


def _strided_conv2d_bwd(strides, pads, res, g):
  x, w = res
  dx = None
  if w.shape[2] >= PHASE_INPUT_GRAD_MIN_CIN:
    dx = strided_conv_input_grad(g, w, strides, pads, x.shape)
  if dx is None:
    dx = jax.vjp(lambda x: _native(x, w, strides, pads), x)[1](g)[0]
  dw = jax.vjp(lambda w: _native(x, w, strides, pads), w)[1](g)[0]
  return dx, dw


strided_conv2d.defvjp(_strided_conv2d_fwd, _strided_conv2d_bwd)


def conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
  """The fastest differentiable form of `_native(x, w, strides, pads)` for these shapes."""
  if narrow_output(w.shape, strides):
    return narrow_conv2d(x, w, pads)
  if tuple(strides) != (1, 1) and w.shape[2] >= NATIVE_STRIDED_MIN_CIN:
    return strided_conv2d(x, w, strides, pads)  # XLA's kernel gradient is fine for these.
  return conv2d(x, w, strides, pads)


def transpose_pads(k: int, s: int) -> tuple[int, int]:
  """lax.conv_transpose's padding of the dilated input for padding="SAME"."""
  pad_len = k + s - 2
  pad_a = k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))
  return pad_a, pad_len - pad_a


def _native_transpose(x: jax.Array, w: jax.Array, strides: tuple[int, int]) -> jax.Array:
  return lax.conv_transpose(x, w, strides, "SAME", dimension_numbers=DIMENSION_NUMBERS)


def _phase_offsets(k: int, s: int, tap) -> list[list[int]] | None:
  """Per output phase r < s, the offsets d with a kernel tap `tap(r, d)` in [0, k).

  None where a phase gets no tap or its offsets do not include 0 (the phase form does
  not apply there).
  """
  phases = [[d for d in range(-k, k + 1) if 0 <= tap(r, d) < k] for r in range(s)]
  if any(not ds or ds[0] > 0 or ds[-1] < 0 for ds in phases):
    return None
  return phases


def _by_phases(z: jax.Array, w: jax.Array, strides: tuple[int, int], taps) -> jax.Array | None:
  """out[s*m + r] = sum_d z[m + d] @ w[tap(r, d)] along each axis: one stride-1 conv per
  output phase (rh, rw) with just that phase's taps, the phases interleaved.

  z [B, H, W, Cz], w [kh, kw, Cz, Cout], `taps` a function (r, d) -> kernel index per axis.
  Returns [B, sh * H, sw * W, Cout], or None where the form does not apply.
  """
  b, h, wd, cz = z.shape
  kh, kw, _, cout = w.shape
  offsets = [_phase_offsets(k, s, t) for k, s, t in zip((kh, kw), strides, taps)]
  if offsets[0] is None or offsets[1] is None:
    return None
  rows = []
  for rh, dh in enumerate(offsets[0]):
    cols = []
    for rw, dw in enumerate(offsets[1]):
      wk = w[np.asarray([taps[0](rh, d) for d in dh])][:, np.asarray([taps[1](rw, d) for d in dw])]
      if dh == [0] and dw == [0]:
        y = (z.reshape(-1, cz) @ wk[0, 0]).reshape(b, h, wd, cout)
      else:
        y = lax.conv_general_dilated(
          z, wk, (1, 1), ((-dh[0], dh[-1]), (-dw[0], dw[-1])), dimension_numbers=DIMENSION_NUMBERS
        )
      cols.append(y)
    rows.append(jnp.stack(cols, axis=3))  # [B, H, W, sw, Cout]
  y = jnp.stack(rows, axis=2)  # [B, H, sh, W, sw, Cout]
  return y.reshape(b, h * strides[0], wd * strides[1], cout)


def transpose_taps(k: int, s: int):
  """(r, d) -> the kernel tap through which x[m + d] reaches output s*m + r of a "SAME"
  transposed conv along one axis: pad_a - r + s*d."""
  pad_a = transpose_pads(k, s)[0]
  return lambda r, d: pad_a - r + s * d


def conv_transpose_phases(x: jax.Array, w: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """`_native_transpose` by output phases: no multiplication by the zeros a dilated input
  would hold, and XLA:CPU runs small stride-1 convs well."""
  taps = [transpose_taps(k, s) for k, s in zip(w.shape[:2], strides)]
  y = _by_phases(x, w, strides, taps)
  return _native_transpose(x, w, strides) if y is None else y


def strided_conv_input_grad(
  g: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads, x_shape: Sequence[int]
) -> jax.Array | None:
  """The input gradient of `_native(x, w, strides, pads)` for output gradient g, by phases.

  x[i] reaches output o through tap i - s*o + lo, so along each axis input s*m + r gathers
  g[m + d] through tap r + lo - s*d. None unless each input side is s times the output's.
  """
  if any(n != s * m for n, s, m in zip(x_shape[1:3], strides, g.shape[1:3])):
    return None
  taps = [lambda r, d, lo=lo, s=s: r + lo - s * d for (lo, _), s in zip(pads, strides)]
  return _by_phases(g, w.transpose(0, 1, 3, 2), strides, taps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def strided_conv_transpose2d(x: jax.Array, w: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """`_native_transpose` for strides > 1, with a GEMM kernel gradient.

  The input gradient (a strided convolution of g) stays XLA's; the kernel gradient is a
  GEMM of x against g's strided patches: dW[k] = sum_p x[p] g[s*p - k + pad_a]. The
  forward pass is `conv_transpose_phases` to many output channels, XLA's to few.
  """
  if w.shape[3] >= PHASE_MIN_COUT:
    return conv_transpose_phases(x, w, strides)
  return _native_transpose(x, w, strides)


def _strided_transpose_fwd(x, w, strides):
  return strided_conv_transpose2d(x, w, strides), (x, w)


def _strided_transpose_bwd(strides, res, g):
  x, w = res
  kh, kw, cin, cout = w.shape
  dx = jax.vjp(lambda x: _native_transpose(x, w, strides), x)[1](g)[0]
  # x[p] reaches g[s*p - k + pad_a] through tap k: a strided conv of g with the flipped kernel.
  pads = tuple((k - 1 - transpose_pads(k, s)[0], 0) for k, s in zip((kh, kw), strides))
  dw = kernel_grad(g, x, (kh, kw, cout, cin), strides, pads)  # [kh, kw, Cout, Cin], flipped
  return dx, dw[::-1, ::-1].transpose(0, 1, 3, 2)


strided_conv_transpose2d.defvjp(_strided_transpose_fwd, _strided_transpose_bwd)


def conv_transpose2d(x: jax.Array, w: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """`lax.conv_transpose(x, w, strides, "SAME")` (NHWC, HWIO, kernel not flipped).

  [B, H, W, Cin] -> [B, sh * H, sw * W, Cout].
  """
  kh, kw, _, _ = w.shape
  if tuple(strides) == (1, 1):  # A stride-1 transposed conv is a conv with the same kernel.
    return conv(x, w, (1, 1), (transpose_pads(kh, 1), transpose_pads(kw, 1)))
  return strided_conv_transpose2d(x, w, tuple(strides))
