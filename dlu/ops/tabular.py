"""A table's reconstruction: a loss per column kind, on the observed cells only.

A table row is encoded (dlu.data.columns) as numbers, 0/1 booleans and one-hot categories;
`groups` says which encoded columns belong to which feature column:

    groups = (("numeric", 0, 1), ("categorical", 1, 4), ("boolean", 4, 5))

A missing cell is NaN in every encoded column of its feature column. The model sees the row
with missing cells as 0 and, where the table has missing cells, the mask beside it
(`model_input`), and outputs one value per encoded column: a number (numeric), a logit
(boolean) or one logit per level (categorical). Its loss per feature column is the squared
error, the binary cross-entropy or the softmax cross-entropy, counted where the cell is
observed (`column_losses`); `reconstruction` turns the outputs into numbers, probabilities and
level probabilities, the data's own terms before unscaling.

With no groups, every encoded column is a number (a table of numbers only).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

Groups = Sequence[tuple[str, int, int]]


def observed(x: jax.Array) -> jax.Array:
  """[B, D] bool: cells that are not missing (NaN)."""
  return ~jnp.isnan(x)


def model_input(x: jax.Array, *, masked: bool) -> jax.Array:
  """What the network reads of rows [B, D] with NaN cells: the rows with missing cells as 0
  (the training mean once standardised) and, when `masked`, the observed mask beside them.
  [B, D] or [B, 2D]"""
  seen = observed(x)
  filled = jnp.where(seen, x, 0.0)
  if not masked:
    return filled
  return jnp.concatenate([filled, seen.astype(x.dtype)], axis=-1)


def _index(groups: Groups, kind: str, d: int) -> list[int]:
  if not groups:
    return list(range(d)) if kind == "numeric" else []
  return [j for k, start, stop in groups if k == kind for j in range(start, stop)]


def column_losses(out: jax.Array, x: jax.Array, groups: Groups) -> tuple[jax.Array, jax.Array]:
  """(losses, seen), both [B, C] for the C feature columns (in the order numbers, booleans,
  categories): each cell's loss, 0 where it is missing, and 1.0 where it is observed."""
  d = x.shape[-1]
  seen = observed(x)
  target = jnp.where(seen, x, 0.0)
  parts, masks = [], []
  for kind in ("numeric", "boolean"):
    idx = _index(groups, kind, d)
    if not idx:
      continue
    idx = jnp.array(idx)
    o, t, m = out[:, idx], target[:, idx], seen[:, idx]
    loss = jnp.square(o - t) if kind == "numeric" else optax.sigmoid_binary_cross_entropy(o, t)
    parts.append(jnp.where(m, loss, 0.0))
    masks.append(m)
  for kind, start, stop in groups:
    if kind != "categorical":
      continue
    m = jnp.all(seen[:, start:stop], axis=-1, keepdims=True)
    # A level unseen at training is all zeros: no target, so no loss (and counted unobserved).
    m = m & (jnp.sum(target[:, start:stop], axis=-1, keepdims=True) > 0)
    loss = optax.softmax_cross_entropy(out[:, start:stop], target[:, start:stop])[:, None]
    parts.append(jnp.where(m, loss, 0.0))
    masks.append(m)
  return jnp.concatenate(parts, axis=-1), jnp.concatenate(masks, axis=-1).astype(out.dtype)


def row_loss(out: jax.Array, x: jax.Array, groups: Groups) -> jax.Array:
  """Each row's mean loss over its observed cells (0 for a row with none). [B]"""
  losses, seen = column_losses(out, x, groups)
  return jnp.sum(losses, axis=-1) / jnp.maximum(jnp.sum(seen, axis=-1), 1.0)


def batch_loss(out: jax.Array, x: jax.Array, groups: Groups) -> jax.Array:
  """The mean loss over every observed cell of the batch (a row with more observed cells counts
  more, as each cell is one observation). []"""
  losses, seen = column_losses(out, x, groups)
  return jnp.sum(losses) / jnp.maximum(jnp.sum(seen), 1.0)


def reconstruction(out: jax.Array, groups: Groups) -> jax.Array:
  """Outputs in the encoded columns' terms: numbers as they are, booleans as P(true), each
  category's levels as probabilities (softmax over its columns). [B, D]"""
  if not groups:
    return out
  pieces = []
  for kind, start, stop in groups:
    o = out[:, start:stop]
    if kind == "boolean":
      o = jax.nn.sigmoid(o)
    elif kind == "categorical":
      o = jax.nn.softmax(o, axis=-1)
    pieces.append(o)
  return jnp.concatenate(pieces, axis=-1)


def log_likelihood(
  out: jax.Array, x: jax.Array, groups: Groups, log_std: jax.Array | float
) -> jax.Array:
  """log p(observed cells | out) per row: a Gaussian of standard deviation exp(log_std) per
  number, Bernoulli per boolean, categorical per category (missing cells contribute 0). [B]"""
  d = x.shape[-1]
  seen = observed(x)
  target = jnp.where(seen, x, 0.0)
  total = jnp.zeros(x.shape[0], out.dtype)
  idx = _index(groups, "numeric", d)
  if idx:
    idx = jnp.array(idx)
    std = jnp.broadcast_to(jnp.asarray(log_std, out.dtype), (d,))[idx]
    z = (target[:, idx] - out[:, idx]) * jnp.exp(-std)
    lp = -0.5 * jnp.square(z) - std - 0.5 * jnp.log(2 * jnp.pi)
    total += jnp.sum(jnp.where(seen[:, idx], lp, 0.0), axis=-1)
  others = [g for g in groups if g[0] != "numeric"]
  if others:
    losses, _ = column_losses(out, x, others)
    total -= jnp.sum(losses, axis=-1)
  return total
