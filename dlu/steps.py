"""Jitted (or pmapped) train, eval, image and embedding functions of a family.

No I/O here: these wrap a family's pure functions with shardings and donation.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dlu import parallel
from dlu.families.base import Family


def make_train_step(family: Family, mesh: Mesh, *, parallelism: str = "jit") -> Callable:
  """(state, batch, rng) -> (state, metrics), the state donated.

  jit: parameters replicated and the batch sharded over 'data'; the loss is a mean
  over the global batch, so its gradient is already the global one.
  pmap: the state carries a leading device axis and gradients are pmean-ed.
  """
  if parallelism == "pmap":
    step = functools.partial(family.train_step, axis_name=parallel.DATA_AXIS)
    return jax.pmap(step, axis_name=parallel.DATA_AXIS, in_axes=(0, 0, None),
                    donate_argnums=(0,))
  repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(family.train_step, in_shardings=(repl, sharded, repl),
                 out_shardings=(repl, repl), donate_argnums=(0,))


def make_init(family: Family, mesh: Mesh) -> tuple[Callable, Any]:
  """A jitted init that builds the state replicated (never first on device 0), and its shapes."""
  repl = parallel.replicated(mesh)
  init = jax.jit(family.init_state, out_shardings=repl)
  abstract = jax.eval_shape(family.init_state, jax.random.key(0))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), abstract)
  return init, abstract


def make_eval_sums(family: Family, mesh: Mesh) -> Callable:
  """(state, batch, mask, rng) -> {metric: sum over unmasked examples}."""

  def sums(state, batch, mask, rng):
    metrics = family.eval_metrics(state, batch, rng)
    return {k: jnp.sum(jnp.where(mask, v, 0.0)) for k, v in metrics.items()}

  repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(sums, in_shardings=(repl, sharded, sharded, repl), out_shardings=repl)


def make_images(family: Family, mesh: Mesh) -> Callable:
  repl = parallel.replicated(mesh)
  return jax.jit(family.images, in_shardings=(repl, repl, repl), out_shardings=repl)


def jit_over_images(fn: Callable, mesh: Mesh) -> Callable:
  """(state, images) -> [B, ...] values per image, sharded like the batch."""
  repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(fn, in_shardings=(repl, sharded), out_shardings=sharded)


def make_embed(family: Family, mesh: Mesh) -> Callable:
  return jit_over_images(family.embed, mesh)


def make_per_example(fn: Callable, mesh: Mesh) -> Callable:
  """(state, images, rng) -> [B, ...] values per example, sharded like the batch."""
  repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(fn, in_shardings=(repl, sharded, repl), out_shardings=sharded)
