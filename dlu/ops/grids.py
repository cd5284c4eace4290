"""Image grids: batches of images arranged in rows and columns, and one PNG-ready picture.

Families return grids [rows, cols, H, W, C] with pixels in [0, 1] (built with `as_grid` and
`paired_rows` inside jitted functions); writers turn them into one image with `tile_grid`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

#: The widest a grid gets: batches are laid out in at most this many columns.
MAX_COLUMNS = 8


def grid_columns(n: int, max_cols: int = MAX_COLUMNS) -> int:
  """The most columns (at most `max_cols`) that split `n` images into full rows."""
  return max(c for c in range(1, max_cols + 1) if n % c == 0)


def as_grid(x: Any) -> Any:
  """[N, H, W, C] -> [rows, cols, H, W, C] with `grid_columns(N)` columns."""
  n = x.shape[0]
  cols = grid_columns(n)
  return x.reshape((n // cols, cols) + x.shape[1:])


def paired_rows(top: Any, bottom: Any) -> Any:
  """[N, H, W, C] pairs as a grid whose rows alternate `top` and `bottom` (e.g. originals
  above their reconstructions). [2 * N / cols, cols, H, W, C]"""
  top, bottom = as_grid(top), as_grid(bottom)
  grid = jnp.stack([top, bottom], axis=1)
  return grid.reshape((2 * top.shape[0],) + top.shape[1:])


def to_unit(x: Any, pixel_range: str) -> Any:
  """Model-space pixels back to [0, 1] for display, clipped."""
  low = -1.0 if pixel_range == "symmetric" else 0.0
  return (jnp.clip(x, low, 1.0) - low) / (1.0 - low)


def tile_grid(grid: np.ndarray, *, pad: int = 1) -> np.ndarray:
  """[rows, cols, H, W, C] in [0, 1] -> one uint8 image [rows*(H+pad)+pad, ..., C]."""
  grid = np.clip(np.asarray(grid, np.float32), 0.0, 1.0)
  rows, cols, h, w, c = grid.shape
  scale = max(1, 32 // h)  # small images (8x8 digits) are enlarged so a grid is legible
  if scale > 1:
    grid = grid.repeat(scale, axis=2).repeat(scale, axis=3)
    h, w = h * scale, w * scale
  out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
  for r in range(rows):
    for k in range(cols):
      y, x = pad + r * (h + pad), pad + k * (w + pad)
      out[y : y + h, x : x + w] = grid[r, k]
  return np.round(out * 255).astype(np.uint8)
