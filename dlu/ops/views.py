"""Random views of images for augmentation-invariant (contrastive) training.

A view is a random crop of the image resized back to full size (area fraction in
[min_scale, 1], aspect ratio in [3/4, 4/3], as in SimCLR's random resized crop), flipped
left-right with probability 1/2, and optionally with its intensities jittered: multiplied by
a random factor in [1 - brightness, 1 + brightness] and raised to a random power in
[exp(-gamma), exp(gamma)] (views are in [0, 1], so black stays black). Everything is
jittable and vmapped over the batch: views are drawn inside the train step from the step's
key, on device, with no host work.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MAX_LOG_RATIO = math.log(4 / 3)


def crop_and_resize(image: jax.Array, box: jax.Array) -> jax.Array:
  """The window `box` = (top, left, height, width) of `image` [H, W, C], in pixels, resized
  (bilinear) to [H, W, C]. The whole image (0, 0, H, W) comes back unchanged."""
  h, w = image.shape[:2]
  top, left, height, width = box[0], box[1], box[2], box[3]
  scale = jnp.stack([h / height, w / width])
  return jax.image.scale_and_translate(
    image, image.shape, (0, 1), scale, -jnp.stack([top, left]) * scale, "linear", antialias=False
  )


def random_box(key: jax.Array, hw: tuple[int, int], min_scale: float) -> jax.Array:
  """(top, left, height, width) of a random crop: area fraction in [min_scale, 1] of the
  image, aspect ratio in [3/4, 4/3] (each side clipped to the image), uniform position."""
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  h, w = hw
  area = jax.random.uniform(k_area, (), minval=min_scale, maxval=1.0)
  ratio = jnp.exp(jax.random.uniform(k_ratio, (), minval=-MAX_LOG_RATIO, maxval=MAX_LOG_RATIO))
  height = jnp.minimum(jnp.sqrt(area * ratio) * h, h)
  width = jnp.minimum(jnp.sqrt(area / ratio) * w, w)
  top = jax.random.uniform(k_top, ()) * (h - height)
  left = jax.random.uniform(k_left, ()) * (w - width)
  return jnp.stack([top, left, height, width])


def jitter_intensity(
  key: jax.Array, image: jax.Array, *, brightness: float, gamma: float
) -> jax.Array:
  """`image` in [0, 1] times a factor in [1 - brightness, 1 + brightness], clipped to [0, 1],
  then to a power in [exp(-gamma), exp(gamma)] (both uniform; 0 turns either off)."""
  k_scale, k_power = jax.random.split(key)
  if brightness:
    image = jnp.clip(
      image * jax.random.uniform(k_scale, (), minval=1 - brightness, maxval=1 + brightness),
      0.0,
      1.0,
    )
  if gamma:
    power = jnp.exp(jax.random.uniform(k_power, (), minval=-gamma, maxval=gamma))
    image = jnp.where(image > 0, jnp.maximum(image, 1e-6) ** power, 0.0)
  return image


def random_view(
  key: jax.Array,
  image: jax.Array,
  *,
  min_scale: float,
  hflip: bool,
  brightness: float = 0.0,
  gamma: float = 0.0,
) -> jax.Array:
  """One random view of `image` [H, W, C] in [0, 1] (see module doc). [H, W, C]"""
  k_box, k_flip = jax.random.split(key)
  view = crop_and_resize(image, random_box(k_box, image.shape[:2], min_scale))
  if hflip:
    view = jnp.where(jax.random.bernoulli(k_flip), view[:, ::-1], view)
  if brightness or gamma:
    view = jitter_intensity(jax.random.fold_in(key, 1), view, brightness=brightness, gamma=gamma)
  return view


def random_views(
  key: jax.Array,
  images: jax.Array,
  *,
  min_scale: float,
  hflip: bool,
  brightness: float = 0.0,
  gamma: float = 0.0,
) -> jax.Array:
  """An independent random view of each image [B, H, W, C] in [0, 1]. [B, H, W, C]"""
  keys = jax.random.split(key, images.shape[0])
  view = lambda k, x: random_view(
    k, x, min_scale=min_scale, hflip=hflip, brightness=brightness, gamma=gamma
  )
  return jax.vmap(view)(keys, images)


def corrupt_features(
  key: jax.Array, x: jax.Array, *, rate: float, noise_std: float = 0.0
) -> jax.Array:
  """A view of table rows [B, D] for contrastive learning, as in SCARF (Bahri et al., 2022):
  each feature of each row is replaced, with probability `rate`, by the same feature of a
  random row of the batch (a draw from its empirical marginal), then Gaussian noise of
  `noise_std` is added. [B, D]"""
  k_mask, k_rows, k_noise = jax.random.split(key, 3)
  replace = jax.random.bernoulli(k_mask, rate, x.shape)
  rows = jax.random.randint(k_rows, x.shape, 0, x.shape[0])
  marginal = jnp.take_along_axis(x, rows, axis=0)  # [B, D]: feature d of row rows[b, d]
  view = jnp.where(replace, marginal, x)
  if noise_std:
    view = view + noise_std * jax.random.normal(k_noise, x.shape, x.dtype)
  return view


def series_views(
  key: jax.Array,
  series: jax.Array,
  *,
  min_crop: float,
  jitter: float = 0.0,
  scaling: float = 0.0,
  time_mask: float = 0.0,
) -> jax.Array:
  """A random view of each series [B, T, C] (NaN where a step is missing), for contrastive
  learning as TS2Vec, TS-TCC and T-Loss draw them: the steps outside a random window of
  [min_crop, 1] of the series' observed span become missing (a crop the encoder sees in
  place); each channel is multiplied by 1 + `scaling` * N(0, 1); N(0, `jitter`^2) noise is
  added to every value; each step is hidden (missing) with probability `time_mask`.
  Missing steps stay missing. [B, T, C]"""
  k_len, k_start, k_scale, k_noise, k_mask = jax.random.split(key, 5)
  b, t = series.shape[:2]
  steps = jnp.arange(t)
  seen = jnp.any(jnp.isfinite(series), axis=-1)  # [B, T]
  span = jnp.max(jnp.where(seen, steps + 1, 0), axis=1).astype(jnp.float32)  # [B] last seen + 1
  length = jnp.ceil(span * jax.random.uniform(k_len, (b,), minval=min_crop, maxval=1.0))
  start = jnp.floor(jax.random.uniform(k_start, (b,)) * (span - length + 1))
  keep = (steps >= start[:, None]) & (steps < (start + length)[:, None])  # [B, T]
  if time_mask:
    keep &= ~jax.random.bernoulli(k_mask, time_mask, (b, t))
  view = series
  if scaling:
    view = view * (1.0 + scaling * jax.random.normal(k_scale, (b, 1, series.shape[2])))
  if jitter:
    view = view + jitter * jax.random.normal(k_noise, series.shape, series.dtype)
  return jnp.where(keep[..., None], view, jnp.nan).astype(series.dtype)
