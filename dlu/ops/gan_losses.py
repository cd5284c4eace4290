"""GAN objectives and gradient penalties as pure functions of discriminator outputs.

Logits are the discriminator's raw scores ([B]); every loss is a mean over the
batch, so under `jax.jit` over a sharded batch it is the global mean.

  loss_type   discriminator                          generator
  ns          softplus(-D(x)) + softplus(D(G(z)))    softplus(-D(G(z)))   (non-saturating)
  hinge       relu(1 - D(x)) + relu(1 + D(G(z)))     -D(G(z))
  wgan_gp     D(G(z)) - D(x)  (+ gradient penalty)   -D(G(z))
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

LOSS_TYPES = ("ns", "hinge", "wgan_gp")

# x [B, ...] -> logits [B]; the penalties need the discriminator as a function of its input.
Critic = Callable[[jax.Array], jax.Array]


def _check(loss_type: str) -> None:
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown GAN loss {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")


def discriminator_loss(
  *, real_logit: jax.Array, fake_logit: jax.Array, loss_type: str = "ns"
) -> jax.Array:
  """The discriminator's adversarial loss (no penalty), a scalar."""
  _check(loss_type)
  if loss_type == "ns":
    # -log sigmoid(r) - log(1 - sigmoid(f)), written stably.
    return jnp.mean(jax.nn.softplus(-real_logit)) + jnp.mean(jax.nn.softplus(fake_logit))
  if loss_type == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - real_logit)) + jnp.mean(jax.nn.relu(1.0 + fake_logit))
  return jnp.mean(fake_logit) - jnp.mean(real_logit)


def generator_loss(*, fake_logit: jax.Array, loss_type: str = "ns") -> jax.Array:
  """The generator's adversarial loss, a scalar."""
  _check(loss_type)
  if loss_type == "ns":
    return jnp.mean(jax.nn.softplus(-fake_logit))  # -log sigmoid(D(G(z)))
  return -jnp.mean(fake_logit)


def _input_grad_norms(critic: Critic, x: jax.Array) -> jax.Array:
  """||d critic(x)_i / d x_i|| per example. [B]

  The gradient of the summed logits is each example's own gradient because the
  critic treats examples independently (no batch normalisation in a discriminator).
  """
  grads = jax.grad(lambda v: jnp.sum(critic(v)))(x)
  return jnp.sqrt(jnp.sum(jnp.square(grads.reshape((x.shape[0], -1))), axis=-1) + 1e-12)


def interpolate(real: jax.Array, fake: jax.Array, weights: jax.Array) -> jax.Array:
  """weights * real + (1 - weights) * fake, one weight per example ([B], in [0, 1])."""
  w = weights.reshape((-1,) + (1,) * (real.ndim - 1)).astype(real.dtype)
  return w * real + (1.0 - w) * fake


def gradient_penalty(
  critic: Critic, *, real: jax.Array, fake: jax.Array, weights: jax.Array
) -> jax.Array:
  """WGAN-GP (Gulrajani et al. 2017): mean (||grad_x D(x_hat)|| - 1)^2 on random interpolates.

  `weights` [B] are the interpolation coefficients, drawn by the caller (uniform in [0, 1])
  so that the penalty itself is a deterministic function.
  """
  norms = _input_grad_norms(critic, interpolate(real, fake, weights))
  return jnp.mean(jnp.square(norms - 1.0))


def r1_penalty(critic: Critic, real: jax.Array) -> jax.Array:
  """R1 (Mescheder et al. 2018): mean ||grad_x D(x)||^2 on real data; callers weight it gamma/2."""
  grads = jax.grad(lambda v: jnp.sum(critic(v)))(real)
  return jnp.mean(jnp.sum(jnp.square(grads.reshape((real.shape[0], -1))), axis=-1))
