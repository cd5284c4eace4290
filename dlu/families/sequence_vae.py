"""Sequence VAEs on time series (series:PATH): `vae_conv1d` and `vae_seq`.

The encoder and decoder of `ae_conv1d` and `ae_seq` (dlu/families/sequence.py) around a
diagonal Gaussian posterior, trained as the VAE family trains (dlu/families/vae.py): the
ELBO with `--train_samples` reparameterised samples, the KL in closed form weighted by
`--beta` and ramped over `--kl_warmup_steps`, or `--objective=iwae`; `elbo`, `recon` and `kl`
logged in nats per series. The decoder is a Gaussian of `--gaussian_std` (or a learned one per
step and channel, `--learn_variance`) over the observed steps only: a missing or padded step
adds nothing to log p(x | z), the ELBO, the anomaly score (-ELBO at the posterior mean) or
the IWAE bound. `--likelihood` and `--binarize` do not apply. `Run.sample` decodes draws
from the prior into series, in the scaled units the model saw.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy import stats

from dlu.config import require_above_zero, require_non_negative, require_positive
from dlu.config.model_flags import int_list
from dlu.errors import UsageError
from dlu.families.base import register
from dlu.families.vae import VAE
from dlu.models import sequence as seq_models


@register
class SeriesVAE(VAE):
  models = ("vae_conv1d", "vae_seq")
  takes_series = True

  @classmethod
  def validate(cls, cfg):
    require_positive(cfg, "latent_dim", "train_samples", "iwae_samples", "iwae_chunk")
    require_non_negative(cfg, "beta", "kl_warmup_steps", "iwae_examples")
    if cfg.model == "vae_conv1d":
      int_list(cfg.conv_channels, "conv_channels")
      require_positive(cfg, "series_kernel_size")
    else:
      require_positive(cfg, "seq_units")
    if not cfg.learn_variance:
      require_above_zero(cfg, "gaussian_std")
    if cfg.objective == "iwae" and (cfg.beta != 1.0 or cfg.kl_warmup_steps):
      raise UsageError(
        "--objective=iwae trains a bound on log p(x): --beta and "
        "--kl_warmup_steps apply to --objective=elbo only"
      )

  def __init__(self, cfg, spec):
    if not spec.is_series:
      what = "images" if spec.is_image else "vectors"
      raise UsageError(
        f"--model={cfg.model} needs time series [T, C] (--dataset=series:PATH); the data are {what}"
      )
    # A Gaussian over the scaled values; series are never binarised.
    super().__init__(cfg.replace(likelihood="gaussian", binarize="none"), spec)

  def make_model(self):
    cfg, shape = self.cfg, tuple(self.spec.example_shape)
    common = dict(
      latent_dim=2 * cfg.latent_dim, kernel_init=self.kernel_init, dtype=self.compute_dtype
    )
    if cfg.model == "vae_conv1d":
      ae = seq_models.Conv1DAutoencoder(
        shape,
        channels=int_list(cfg.conv_channels, "conv_channels"),
        kernel_size=cfg.series_kernel_size,
        **common,
      )
    else:
      ae = seq_models.GRUAutoencoder(shape, units=cfg.seq_units, **common)
    return seq_models.SeriesVAE(ae, cfg.latent_dim, shape, learn_variance=cfg.learn_variance)

  def model_input(self, series, rng):
    """The series as stored, NaN where a step is missing (the model and the likelihood mask
    them). [B, T, C]"""
    return series

  def log_likelihood(self, params, out, x):
    """log N(x | out, std^2) summed over the observed values of each series. [...]"""
    log_std = (
      params["pixel_log_std"] if self.cfg.learn_variance else math.log(self.cfg.gaussian_std)
    )
    seen = jnp.isfinite(x)
    logp = stats.norm.logpdf(jnp.where(seen, x, 0.0), out, jnp.exp(log_std))
    return jnp.sum(jnp.where(seen, logp, 0.0), axis=(-2, -1))

  def images(self, state, batch, rng):
    return {}  # the series_plots evaluator draws series

  def step_scores(self, state, series: jax.Array) -> jax.Array:
    """Anomaly score per time step: squared error of the decoder's mean at the posterior mean,
    averaged over the observed channels (0 where none is). [B, T]"""
    seen = jnp.isfinite(series)
    err = jnp.where(seen, jnp.square(self.reconstruct(state, series) - series), 0.0)
    return jnp.sum(err, -1) / jnp.maximum(jnp.sum(seen, -1), 1)
