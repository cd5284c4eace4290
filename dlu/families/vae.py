"""Variational autoencoders: VAE and beta-VAE (MLP `vae`, convolutional `conv_vae`).

Trained on the ELBO (`--objective=elbo`, `--train_samples` reparameterised samples, KL in
closed form, weighted by `--beta` and ramped up over `--kl_warmup_steps`) or on the
importance-weighted bound of Burda et al. (`--objective=iwae`, K=`--train_samples`; K=1
is the ELBO with a one-sample KL). The K samples are one batched decoder call, no loop.

Units and signs, all in nats per image:
  elbo      the ELBO, a lower bound on log p(x): negative; elbo = -(recon + kl)
  recon     E_q(z|x)[-log p(x|z)], one posterior sample: positive for Bernoulli
  kl        KL(q(z|x) || p(z)) in closed form: positive
  nll_iwae  -(IWAE bound with K=`--iwae_samples`): an upper bound on -log p(x), positive,
            at the end of training and in experiments.evaluate; bits_per_dim beside it.
  active_units  latent dims whose posterior mean varies over the test split (variance > 0.01)

Dynamic binarisation (`--binarize=dynamic`, the setting of the IWAE paper's tables): each
image is replaced by a Bernoulli sample of its pixel intensities, drawn afresh each train
step. Test images are binarised the same way with the run's fixed *eval* key folded with
the eval batch's index, so every eval of a run, the final IWAE bound and experiments.evaluate
all score one and the same binary test set (for a given --eval_batch_size), and numbers are
comparable across evals. `embed` returns the posterior means of the grey (not binarised)
images, so embeddings are deterministic.

All noise comes from the key the loop passes, folded with the step (train) or the batch
index (eval): runs are reproducible and resume exactly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from dlu.config import require_non_negative, require_positive
from dlu.config.model_flags import conv_channels, int_list
from dlu.errors import UsageError
from dlu.families.base import SingleNetworkFamily, register
from dlu.models import vae as vae_models
from dlu.ops import likelihoods, tabular
from dlu.ops.grids import as_grid, paired_rows, to_unit
from dlu.ops.likelihoods import samples_per_chunk
from dlu.runtime import batched_eval

flags.DEFINE_enum(
  "likelihood",
  "bernoulli",
  ["bernoulli", "gaussian"],
  "VAE decoder: bernoulli (logits, data in [0, 1]) or gaussian (means).",
)
flags.DEFINE_float("gaussian_std", 0.1, "Fixed pixel standard deviation of --likelihood=gaussian.")
flags.DEFINE_boolean(
  "learn_variance",
  False,
  "--likelihood=gaussian: learn a per-pixel log standard deviation instead.",
)
flags.DEFINE_float("beta", 1.0, "Weight of the KL term (beta-VAE); 1 is the ELBO.")
flags.DEFINE_integer(
  "kl_warmup_steps", 0, "Ramp the KL weight linearly from 0 to --beta over N steps."
)
flags.DEFINE_enum(
  "objective",
  "elbo",
  ["elbo", "iwae"],
  "elbo: mean over samples of the ELBO; iwae: the importance-weighted bound.",
)
flags.DEFINE_integer("train_samples", 1, "Posterior samples per image in training (K of the IWAE).")
flags.DEFINE_enum(
  "binarize",
  "dynamic",
  ["dynamic", "none"],
  "dynamic: a fresh Bernoulli sample of each image per batch (test: a fixed one).",
)
flags.DEFINE_integer("iwae_samples", 1000, "Importance samples K of the final nll_iwae.")
flags.DEFINE_integer(
  "iwae_chunk", 4096, "Decoder evaluations (images x samples) at once for nll_iwae: bounds memory."
)
flags.DEFINE_integer("iwae_examples", 0, "Test images scored by nll_iwae; 0: the whole test split.")

_SAMPLES_KEY, _MANIFOLD_SIDE, _INTERPOLATION_STEPS = 1, 15, 8


@register
class VAE(SingleNetworkFamily):
  """Images, vectors and tables. On a table with column kinds or missing cells (`spec.columns`,
  `spec.masked`) the encoder reads the row with missing cells as 0 (and the mask beside it),
  and log p(x | z) is each observed cell's own: Gaussian for numbers, Bernoulli for booleans,
  categorical for categories (dlu.ops.tabular)."""

  models = ("vae", "conv_vae")
  takes_missing = True
  takes_embedded = True

  @classmethod
  def validate(cls, cfg):
    require_positive(cfg, "latent_dim")
    if cfg.model == "vae":
      int_list(cfg.widths, "widths")
    else:
      int_list(cfg.conv_channels, "conv_channels")
    require_positive(cfg, "train_samples", "iwae_samples", "iwae_chunk")
    if not 0 <= cfg.hide_rate < 1:
      raise UsageError(f"--hide_rate is a share of cells: must be in [0, 1), got {cfg.hide_rate!r}")
    require_non_negative(cfg, "beta", "kl_warmup_steps", "iwae_examples")
    if cfg.likelihood == "bernoulli" and cfg.pixel_range != "unit":
      raise UsageError("--likelihood=bernoulli needs --pixel_range=unit (targets in [0, 1])")
    if cfg.binarize == "dynamic" and cfg.likelihood != "bernoulli":
      raise UsageError(
        "--binarize=dynamic makes binary images: it needs --likelihood=bernoulli "
        "(use --binarize=none with --likelihood=gaussian)"
      )
    if cfg.likelihood == "gaussian" and not cfg.learn_variance and not cfg.gaussian_std > 0:
      raise UsageError(f"--gaussian_std must be > 0, got {cfg.gaussian_std!r}")
    if cfg.learn_variance and cfg.likelihood != "gaussian":
      raise UsageError("--learn_variance needs --likelihood=gaussian")
    if cfg.objective == "iwae" and (cfg.beta != 1.0 or cfg.kl_warmup_steps):
      raise UsageError(
        "--objective=iwae trains a bound on log p(x): --beta and "
        "--kl_warmup_steps apply to --objective=elbo only"
      )

  def __init__(self, cfg, spec):
    super().__init__(cfg, spec)
    if cfg.model == "conv_vae":
      spec.require_images(cfg.model, instead="vae")
    if not spec.is_image and (cfg.likelihood != "gaussian" or cfg.binarize != "none"):
      raise UsageError(
        "--model=vae on vectors needs --likelihood=gaussian --binarize=none: features scaled "
        "by --feature_scaling are not pixel intensities in [0, 1]"
      )

  def make_model(self):
    cfg, shape = self.cfg, self.spec.example_shape
    if cfg.model == "conv_vae":
      return vae_models.VAE(
        shape,
        cfg.latent_dim,
        "conv",
        channels=conv_channels(cfg, shape),
        learn_variance=cfg.learn_variance,
        kernel_init=self.kernel_init,
        dtype=self.compute_dtype,
      )
    return vae_models.VAE(
      shape,
      cfg.latent_dim,
      "mlp",
      widths=int_list(cfg.widths, "widths"),
      learn_variance=cfg.learn_variance,
      kernel_init=self.kernel_init,
      dtype=self.compute_dtype,
      embedded=self.spec.embedded,
    )

  # --- The model's pieces, as pure functions of the parameters.

  def model_input(self, images: jax.Array, rng: jax.Array) -> jax.Array:
    """Normalised images, binarised with `rng` under --binarize=dynamic. [B, H, W, C]"""
    x = self.normalize(images)
    if self.cfg.binarize == "dynamic":
      x = jax.random.bernoulli(rng, x).astype(x.dtype)
    return x

  @property
  def tabular(self) -> bool:
    """Rows of a table with column kinds or missing cells (see the class docstring)."""
    return not self.spec.is_image and (bool(self.spec.columns) or self.spec.masked)

  def init_params(self, rng):
    dummy = jnp.zeros((1,) + self.spec.example_shape, jnp.float32)
    if self.tabular:
      dummy = tabular.model_input(dummy, masked=self.spec.masked)
    return self.model.init(rng, dummy)["params"]

  def encode(self, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    if self.tabular:
      x = tabular.model_input(x, masked=self.spec.masked)
    return self.model.apply({"params": params}, x, method="encode")  # [B, D] each

  def decode(self, params, z: jax.Array) -> jax.Array:
    return self.model.apply({"params": params}, z, method="decode")  # [..., H, W, C]

  def log_likelihood(self, params, out: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x | z) for decoder outputs `out` [..., H, W, C] or [..., D]. [...]"""
    event_ndims = len(self.spec.example_shape)
    if self.cfg.likelihood == "bernoulli":
      return likelihoods.bernoulli_log_prob(out, x, event_ndims=event_ndims)
    log_std = (
      params["pixel_log_std"] if self.cfg.learn_variance else math.log(self.cfg.gaussian_std)
    )
    if self.tabular:
      return tabular.log_likelihood(out, x, self.spec.columns, log_std)
    return likelihoods.gaussian_log_prob(out, log_std, x, event_ndims=event_ndims)

  def mean_image(self, out: jax.Array) -> jax.Array:
    """E[x | z] in pixel space, for display (a table's categories and booleans as
    probabilities)."""
    if self.tabular:
      return tabular.reconstruction(out, self.spec.columns)
    return jax.nn.sigmoid(out) if self.cfg.likelihood == "bernoulli" else out

  def posterior_samples(self, mean, log_var, rng, k: int) -> jax.Array:
    """k reparameterised draws from q(z|x). [k, B, D]"""
    eps = jax.random.normal(rng, (k,) + mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * log_var) * eps

  def sample_terms(self, params, x, mean, log_var, rng, k: int):
    """Per-sample log p(x|z) and log p(z) - log q(z|x) for k posterior draws. [k, B] each"""
    z = self.posterior_samples(mean, log_var, rng, k)
    log_px = self.log_likelihood(params, self.decode(params, z), x[None])
    log_prior_ratio = likelihoods.standard_normal_log_prob(z) - likelihoods.diag_gaussian_log_prob(
      z, mean, log_var
    )
    return log_px, log_prior_ratio

  def kl_weight(self, step: jax.Array) -> jax.Array:
    """--beta, ramped linearly from 0 over --kl_warmup_steps."""
    beta, warmup = self.cfg.beta, self.cfg.kl_warmup_steps
    if warmup == 0:
      return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup)

  # --- What the loop calls.

  def train_step(self, state, batch, rng, *, axis_name=None):
    # The loss reads the step for the KL warm-up.
    return super().train_step(state, {**batch, "step": state.step}, rng, axis_name=axis_name)

  def loss(self, params, batch, rng):
    binarize_rng, z_rng = jax.random.split(rng)
    x = self.model_input(batch["image"], binarize_rng)
    x_in = x
    if self.tabular and self.spec.masked and self.cfg.hide_rate:  # learn to fill cells
      x_in = tabular.hide(x, jax.random.fold_in(rng, 2), self.cfg.hide_rate, self.spec.columns)
    mean, log_var = self.encode(params, x_in)
    log_px, log_prior_ratio = self.sample_terms(
      params, x, mean, log_var, z_rng, self.cfg.train_samples
    )
    recon = -jnp.mean(log_px, axis=0)  # [B]
    kl = likelihoods.kl_to_standard_normal(mean, log_var)  # [B]
    weight = self.kl_weight(batch["step"])
    if self.cfg.objective == "iwae":
      loss = -jnp.mean(likelihoods.importance_weighted_bound(log_px + log_prior_ratio))
    else:
      loss = jnp.mean(recon + weight * kl)
    return loss, {
      "elbo": -jnp.mean(recon + kl),
      "recon": jnp.mean(recon),
      "kl": jnp.mean(kl),
      "kl_weight": weight,
    }

  def eval_metrics(self, state, batch, rng):
    binarize_rng, z_rng = jax.random.split(rng)
    x = self.model_input(batch["image"], binarize_rng)
    mean, log_var = self.encode(state.params, x)
    log_px, _ = self.sample_terms(state.params, x, mean, log_var, z_rng, 1)
    recon, kl = -log_px[0], likelihoods.kl_to_standard_normal(mean, log_var)
    return {"elbo": -(recon + kl), "recon": recon, "kl": kl}

  def posterior_mean(self, state, images, rng):
    """Posterior means of the test inputs as eval_metrics sees them. [B, D]"""
    binarize_rng, _ = jax.random.split(rng)
    return self.encode(state.params, self.model_input(images, binarize_rng))[0]

  def iwae_bound(self, state, images, rng):
    """The IWAE bound with K=--iwae_samples, K/chunk decoder passes in a scan. [B]"""
    binarize_rng, z_rng = jax.random.split(rng)
    params = state.params
    x = self.model_input(images, binarize_rng)
    mean, log_var = self.encode(params, x)
    k = self.cfg.iwae_samples
    chunk = samples_per_chunk(k, x.shape[0], self.cfg.iwae_chunk)

    def chunk_logsumexp(_, i):
      log_px, log_prior_ratio = self.sample_terms(
        params, x, mean, log_var, jax.random.fold_in(z_rng, i), chunk
      )
      return None, jax.nn.logsumexp(log_px + log_prior_ratio, axis=0)  # [B]

    _, per_chunk = jax.lax.scan(chunk_logsumexp, None, jnp.arange(k // chunk))
    return jax.nn.logsumexp(per_chunk, axis=0) - math.log(k)

  def split_metrics(self, state, dataset, ctx):
    return {"active_units": self.active_units(state, dataset.x_test, ctx)}

  def final_metrics(self, state, dataset, ctx):
    x = dataset.x_test[: self.cfg.iwae_examples or None]
    # Fewer images than an eval batch: a smaller batch, not padding that is scored too. The
    # binarisation of the first rows does not change (JAX draws each element from its index).
    batch_size = min(ctx.batch_size, batched_eval.round_batch_size(len(x)))
    bounds = batched_eval.per_example(
      self._per_example("iwae_bound", ctx.mesh),
      state,
      x,
      mesh=ctx.mesh,
      batch_size=batch_size,
      rng=ctx.rng,
    )
    nll = -float(np.mean(bounds))
    bin_width = None
    if (
      self.cfg.likelihood == "gaussian" and self.spec.is_image
    ):  # a density on 8-bit pixels: add the bins' width
      bin_width = (2.0 if self.spec.pixel_range == "symmetric" else 1.0) / 256
    return {
      "nll_iwae": nll,
      "nll_iwae_stderr": float(np.std(bounds) / math.sqrt(len(bounds))),
      "bits_per_dim": likelihoods.bits_per_dim(
        nll, math.prod(self.spec.example_shape), bin_width=bin_width
      ),
    }

  def images(self, state, batch, rng):
    params, d = state.params, self.cfg.latent_dim
    binarize_rng, _ = jax.random.split(rng)
    x = self.model_input(batch["image"], binarize_rng)
    show = lambda out: to_unit(self.mean_image(out), self.spec.pixel_range)
    unit_x = to_unit(x, self.spec.pixel_range)
    mean, _ = self.encode(params, x)
    n = x.shape[0]
    grids = {"reconstructions": paired_rows(unit_x, show(self.decode(params, mean)))}

    # Prior samples from the same noise at every eval (the key is the run's eval key).
    z = jax.random.normal(jax.random.fold_in(rng, _SAMPLES_KEY), (n, d))
    grids["samples"] = as_grid(show(self.decode(params, z)))

    # Each row: a test image, decodes along the line between two posterior means, another.
    pairs = min(8, n // 2)
    if pairs:
      a, b = mean[:pairs], mean[pairs : 2 * pairs]
      t = jnp.linspace(0.0, 1.0, _INTERPOLATION_STEPS)[None, :, None]
      path = show(self.decode(params, a[:, None] + t * (b - a)[:, None]))
      grids["interpolations"] = jnp.concatenate(
        [unit_x[:pairs, None], path, unit_x[pairs : 2 * pairs, None]], axis=1
      )

    if d == 2:  # The decoded manifold over the prior's quantiles (z2 grows upwards).
      q = jax.scipy.stats.norm.ppf(jnp.linspace(0.05, 0.95, _MANIFOLD_SIDE))
      z1, z2 = jnp.meshgrid(q, q[::-1])
      grids["manifold"] = show(self.decode(params, jnp.stack([z1, z2], axis=-1)))
    return grids

  def embed(self, state, images):
    return self.encode(state.params, self.normalize(images))[0]

  def reconstruct(self, state, images):
    """The decoder's mean at the posterior mean of the (grey, not binarised) inputs. [B, ...]"""
    return self.mean_image(self.decode(state.params, self.embed(state, images)))

  def score(self, state, images):
    """-ELBO at the posterior mean: -log p(x | z = mean) + KL(q(z|x) || p(z)), deterministic
    (grey inputs, not binarised). A Bernoulli likelihood of grey pixels is offset by their own
    entropy (the score's floor, 0 for binary images), which otherwise ranks images by how much
    mid-grey they hold. [B]"""
    x = self.normalize(images)
    mean, log_var = self.encode(state.params, x)
    log_px = self.log_likelihood(state.params, self.decode(state.params, mean), x)
    if self.cfg.likelihood == "bernoulli":
      log_px = log_px - self.log_likelihood(
        state.params, jax.scipy.special.logit(jnp.clip(x, 1e-6, 1 - 1e-6)), x
      )
    return -log_px + likelihoods.kl_to_standard_normal(mean, log_var)
