"""Optax optimizers from the run configuration."""

from __future__ import annotations

import optax

from dlu.config import Config


def learning_rate_schedule(cfg: Config, *, learning_rate: float | None = None) -> optax.Schedule:
  peak = cfg.learning_rate if learning_rate is None else learning_rate
  decay_steps = max(cfg.num_steps - cfg.warmup_steps, 1)
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if cfg.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(
  cfg: Config, *, learning_rate: float | None = None, b1: float | None = None
) -> optax.GradientTransformation:
  """The optimizer `--optimizer` names, with clipping, weight decay and schedule.

  `learning_rate` and `b1` override the flags for families with several networks.
  """
  lr = learning_rate_schedule(cfg, learning_rate=learning_rate)
  b1 = cfg.b1 if b1 is None else b1
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  if cfg.optimizer in ("gd", "sgd"):
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.sgd(lr))
  elif cfg.optimizer == "momentum":
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.sgd(lr, momentum=cfg.momentum))
  elif cfg.optimizer == "adam":
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.adam(lr, b1=b1, b2=cfg.b2))
  elif cfg.optimizer == "adamw":
    parts.append(optax.adamw(lr, b1=b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
  else:
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
  return optax.chain(*parts)
