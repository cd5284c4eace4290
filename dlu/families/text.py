"""Text models on token ids (text:PATH): `text_ae` (a Transformer encoder with a pooled
code and a causal Transformer decoder trained with teacher forcing), `text_lm` (that decoder
alone, with no code: an autoregressive language model of the same size, the baseline the
VAE's bound is read against) and `text_vae` (the same
as a sentence VAE in the manner of Bowman et al., 2016: the KL weight annealed from 0 over
--kl_anneal_steps, word dropout on the decoder's inputs, and free bits, Kingma et al. 2016: each
latent dimension's batch-mean KL counts at least --free_bits nats, so the posterior is not
pushed onto the prior early on). With --token_mask_rate both are denoising autoencoders: that
fraction of the encoder's input tokens is replaced by the unknown token in training while the
decoder reconstructs the original document.

Metrics per document (averaged over documents): `token_acc` (teacher-forced next-token
accuracy of the reconstruction), `bits_per_token` (its cross-entropy; for the VAE the negative
ELBO, an upper bound on -log2 p(x), divided by the document's tokens) and, with the byte
tokeniser, `bits_per_byte` (the same bits over the document's bytes); the VAE adds `kl` and
`recon` (nats per document) and, on each evaluated split, `active_units` (latent dimensions
whose posterior mean varies over the documents, variance > 0.01: Burda et al.'s measure; 0
means the posterior collapsed). text_lm's `bits_per_token` and `bits_per_byte` are its exact
-log2 p(x) over the same tokens, so the two read side by side.

After the last step (the `likelihood` evaluator) the VAE reports the importance-weighted bound
of Burda et al. (2016) with K=`--iwae_samples` posterior draws per document, log-mean-exp of
log p(x|z) + log p(z) - log q(z|x): `nll_iwae` (nats per document, an upper bound on -log p(x)
no looser than the ELBO's), `bits_per_token_iwae` and `bits_per_byte_iwae`, over the first
`--iwae_examples` test documents (0: all), `--iwae_chunk` decoder passes (documents x draws)
at once.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from dlu.config import require_non_negative, require_positive
from dlu.data import text as text_data
from dlu.errors import UsageError
from dlu.families.base import SingleNetworkFamily, register
from dlu.models import text as text_models
from dlu.ops import likelihoods
from dlu.runtime import batched_eval

flags.DEFINE_integer(
  "text_dim", 64, "text_ae, text_vae, text_simcse: width of the Transformer layers."
)
flags.DEFINE_integer("text_heads", 4, "text_*: attention heads (divide --text_dim).")
flags.DEFINE_integer("text_layers", 2, "text_*: layers of the encoder (and of the decoder).")
flags.DEFINE_integer("text_ff", 256, "text_*: width of the feed-forward layers.")
flags.DEFINE_float(
  "word_dropout",
  0.25,
  "text_ae, text_vae: the fraction of the decoder's input tokens replaced by the unknown token "
  "in training, so that it must read the code (Bowman et al.).",
)
flags.DEFINE_float(
  "token_mask_rate",
  0.0,
  "text_ae, text_vae: the fraction of the encoder's input tokens replaced by the unknown token "
  "in training (masked-token denoising: the decoder still reconstructs the whole document).",
)
flags.DEFINE_float(
  "text_view_crop",
  0.5,
  "text_simcse: each view is a random span of at least this fraction of the document's tokens "
  "(1: the whole document).",
)
flags.DEFINE_float(
  "text_view_token_drop",
  0.2,
  "text_simcse: the fraction of a view's tokens deleted (the rest close up).",
)
flags.DEFINE_integer(
  "kl_anneal_steps", 2000, "text_vae: the KL weight ramps linearly from 0 to 1 over N steps."
)
flags.DEFINE_float(
  "free_bits",
  0.1,
  "text_vae: nats each latent dimension's batch-mean KL counts at least (0: the plain ELBO).",
)

_SAMPLES_KEY = 1


def document_bits(nats: jax.Array, tokens: jax.Array, vocab_size: int, suffix: str = "") -> dict:
  """`bits_per_token` and, with byte tokens, `bits_per_byte` (each + suffix) of nats per
  document [B] over the documents' tokens [B, L] (the end token counts as a token, not a byte)."""
  count = jnp.maximum(jnp.sum(tokens != text_data.PAD, axis=-1), 1)
  out = {f"bits_per_token{suffix}": nats / count / math.log(2)}
  if vocab_size == text_data.BYTE_VOCAB:
    n_bytes = jnp.maximum(jnp.sum(tokens >= text_data.NUM_SPECIAL, axis=-1), 1)
    out[f"bits_per_byte{suffix}"] = nats / n_bytes / math.log(2)
  return out


def validate_transformer(cfg) -> None:
  """The flags of the text families' Transformer (text_ae, text_vae, text_simcse)."""
  require_positive(cfg, "latent_dim", "text_dim", "text_heads", "text_layers", "text_ff")
  if cfg.text_dim % cfg.text_heads:
    raise UsageError(f"--text_heads={cfg.text_heads} must divide --text_dim={cfg.text_dim}")


def require_text(cfg, spec) -> None:
  if not spec.is_text:
    raise UsageError(f"--model={cfg.model} needs text (--dataset=text:PATH)")


def transformer_args(family) -> dict:
  """The Transformer's arguments every text model takes, from the family's flags and data."""
  cfg = family.cfg
  return dict(
    vocab_size=family.spec.vocab_size,
    max_length=family.spec.example_shape[0],
    dim=cfg.text_dim,
    heads=cfg.text_heads,
    layers=cfg.text_layers,
    ff=cfg.text_ff,
    latent_dim=cfg.latent_dim,
    dropout=cfg.dropout,
    kernel_init=family.kernel_init,
    dtype=family.compute_dtype,
  )


@register
class TextAutoencoder(SingleNetworkFamily):
  models = ("text_ae", "text_vae")
  takes_text = True
  progress_keys = ("loss", "token_acc")

  @classmethod
  def validate(cls, cfg):
    validate_transformer(cfg)
    require_non_negative(cfg, "kl_anneal_steps", "free_bits")
    if cfg.model == "text_vae":
      require_positive(cfg, "iwae_samples", "iwae_chunk")
      require_non_negative(cfg, "iwae_examples")
    for name in ("word_dropout", "token_mask_rate"):
      if not 0 <= getattr(cfg, name) < 1:
        raise UsageError(f"--{name}={getattr(cfg, name)}: expected a fraction in [0, 1)")

  def __init__(self, cfg, spec):
    require_text(cfg, spec)
    super().__init__(cfg, spec)
    self.variational = cfg.model == "text_vae"

  def make_model(self):
    return text_models.TextAutoencoder(**transformer_args(self), variational=self.variational)

  def init_params(self, rng):
    dummy = jnp.zeros((1,) + tuple(self.spec.example_shape), jnp.int32)
    return self.model.init(rng, dummy, dummy)["params"]

  # --- The model's pieces.

  def _code(self, params, tokens, rng=None):
    """(code [B, D], mean, log_var): a posterior sample when `rng` is given (VAE), else the
    mean; mean and log_var are None for the plain autoencoder."""
    rngs = {"dropout": jax.random.fold_in(rng, 1)} if rng is not None and self.cfg.dropout else {}
    out = self.model.apply({"params": params}, tokens, method="encode", rngs=rngs)
    if not self.variational:
      return out, None, None
    mean, log_var = out
    if rng is None:
      return mean, mean, log_var
    eps = jax.random.normal(jax.random.fold_in(rng, 2), mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * log_var) * eps, mean, log_var

  def _token_nll(self, params, z, tokens, inputs, rng=None):
    """(cross-entropy [B, L] on real tokens, logits [B, L, V])."""
    rngs = {"dropout": jax.random.fold_in(rng, 3)} if rng is not None and self.cfg.dropout else {}
    logits = self.model.apply({"params": params}, z, inputs, method="logits", rngs=rngs)
    mask = (tokens != text_data.PAD).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens) * mask, logits

  def kl_weight(self, step):
    if not self.cfg.kl_anneal_steps:
      return jnp.float32(1.0)
    return jnp.minimum(1.0, step.astype(jnp.float32) / self.cfg.kl_anneal_steps)

  # --- What the loop calls.

  def train_step(self, state, batch, rng, *, axis_name=None):
    return super().train_step(state, {**batch, "step": state.step}, rng, axis_name=axis_name)

  def loss(self, params, batch, rng):
    tokens = batch["image"]
    inputs = text_models.decoder_inputs(tokens, text_data.BOS)
    if self.cfg.word_dropout:
      drop = jax.random.bernoulli(jax.random.fold_in(rng, 4), self.cfg.word_dropout, inputs.shape)
      drop = drop & (inputs >= text_data.NUM_SPECIAL)
      inputs = jnp.where(drop, text_data.UNK, inputs)
    z, mean, log_var = self._code(params, self._masked(tokens, rng), rng)
    nll, logits = self._token_nll(params, z, tokens, inputs, rng)
    mask = tokens != text_data.PAD
    count = jnp.maximum(jnp.sum(mask), 1)
    acc = jnp.sum((jnp.argmax(logits, -1) == tokens) & mask) / count
    if not self.variational:
      return jnp.sum(nll) / count, {"token_acc": acc}
    recon = jnp.sum(nll, axis=1)  # [B] nats per document
    kl_dims = 0.5 * (jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var)  # [B, D]
    kl = jnp.sum(kl_dims, axis=1)
    kept = jnp.maximum(jnp.mean(kl_dims, axis=0), self.cfg.free_bits)  # free bits per dim
    weight = self.kl_weight(batch["step"])
    loss = jnp.mean(recon) + weight * jnp.sum(kept)
    return loss, {
      "token_acc": acc,
      "recon": jnp.mean(recon),
      "kl": jnp.mean(kl),
      "kl_weight": weight,
      "elbo": -jnp.mean(recon + kl),
    }

  def _masked(self, tokens, rng):
    """The encoder's training inputs: with --token_mask_rate, that fraction of the document's
    tokens (not its end token) replaced by the unknown token. [B, L]"""
    if not self.cfg.token_mask_rate:
      return tokens
    hide = jax.random.bernoulli(jax.random.fold_in(rng, 5), self.cfg.token_mask_rate, tokens.shape)
    return jnp.where(hide & (tokens >= text_data.NUM_SPECIAL), text_data.UNK, tokens)

  def _document_metrics(self, state, tokens, rng):
    params = state.params
    inputs = text_models.decoder_inputs(tokens, text_data.BOS)
    z, mean, log_var = self._code(params, tokens)
    nll, logits = self._token_nll(params, z, tokens, inputs)
    mask = tokens != text_data.PAD
    count = jnp.maximum(jnp.sum(mask, axis=1), 1)
    out = {"token_acc": jnp.sum((jnp.argmax(logits, -1) == tokens) & mask, axis=1) / count}
    total = jnp.sum(nll, axis=1)
    if self.variational:
      z_s, _, _ = self._code(params, tokens, rng)
      recon = jnp.sum(self._token_nll(params, z_s, tokens, inputs)[0], axis=1)
      kl = likelihoods.kl_to_standard_normal(mean, log_var)
      out.update(recon=recon, kl=kl)
      total = recon + kl
    out.update(document_bits(total, tokens, self.spec.vocab_size))
    return out

  def eval_metrics(self, state, batch, rng):
    return self._document_metrics(state, batch["image"], rng)

  def posterior_mean(self, state, tokens, rng):
    return self._code(state.params, tokens)[0]

  def split_metrics(self, state, dataset, ctx):
    if not self.variational:
      return {}
    return {"active_units": self.active_units(state, dataset.x_test, ctx)}

  def log_weights(self, params, tokens, mean, log_var, rng, k: int):
    """log p(x|z) + log p(z) - log q(z|x) of k posterior draws of each document. [k, B]"""
    eps = jax.random.normal(rng, (k, *mean.shape), mean.dtype)
    z = mean + jnp.exp(0.5 * log_var) * eps  # [k, B, D]
    inputs = text_models.decoder_inputs(tokens, text_data.BOS)
    logits = self.model.apply({"params": params}, z, inputs, method="logits")  # [k, B, L, V]
    labels = jnp.broadcast_to(tokens, logits.shape[:-1])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    log_px = -jnp.sum(nll * (tokens != text_data.PAD), axis=-1)
    prior = likelihoods.standard_normal_log_prob(z)
    return log_px + prior - likelihoods.diag_gaussian_log_prob(z, mean, log_var)

  def iwae_bound(self, state, tokens, rng, k: int | None = None):
    """The IWAE bound on log p(x) with K=k (default --iwae_samples) draws, K/chunk decoder
    passes in a scan. [B]"""
    params = state.params
    mean, log_var = self.model.apply({"params": params}, tokens, method="encode")
    k = k or self.cfg.iwae_samples
    chunk = likelihoods.samples_per_chunk(k, tokens.shape[0], self.cfg.iwae_chunk)

    def chunk_logsumexp(_, i):
      w = self.log_weights(params, tokens, mean, log_var, jax.random.fold_in(rng, i), chunk)
      return None, jax.nn.logsumexp(w, axis=0)  # [B]

    _, per_chunk = jax.lax.scan(chunk_logsumexp, None, jnp.arange(k // chunk))
    return jax.nn.logsumexp(per_chunk, axis=0) - math.log(k)

  def final_metrics(self, state, dataset, ctx):
    if not self.variational:
      return {}
    x = dataset.x_test[: self.cfg.iwae_examples or None]
    batch_size = min(ctx.batch_size, batched_eval.round_batch_size(len(x)))
    bounds = batched_eval.per_example(
      self._per_example("iwae_bound", ctx.mesh),
      state,
      x,
      mesh=ctx.mesh,
      batch_size=batch_size,
      rng=ctx.rng,
    )
    bounds = np.asarray(bounds, np.float64)
    bits = document_bits(-bounds, np.asarray(x), self.spec.vocab_size, "_iwae")
    return {
      "nll_iwae": -float(np.mean(bounds)),
      "nll_iwae_stderr": float(np.std(bounds) / math.sqrt(len(bounds))),
      "iwae_samples": self.cfg.iwae_samples,
      **{name: float(np.mean(v)) for name, v in bits.items()},
    }

  def images(self, state, batch, rng):
    return {}

  def embed(self, state, tokens):
    """The code (the posterior mean for the VAE). [B, D]"""
    return self._code(state.params, tokens)[0]

  def score(self, state, tokens):
    """Anomaly score: nats per token of the document's reconstruction from its code (the VAE
    adds its KL, spread over the tokens). [B]"""
    params = state.params
    z, mean, log_var = self._code(params, tokens)
    nll, _ = self._token_nll(params, z, tokens, text_models.decoder_inputs(tokens, text_data.BOS))
    count = jnp.maximum(jnp.sum(tokens != text_data.PAD, axis=1), 1)
    total = jnp.sum(nll, axis=1)
    if self.variational:
      total = total + likelihoods.kl_to_standard_normal(mean, log_var)
    return total / count

  def generate(self, state, z):
    """Greedy decoding from codes [B, D]: token ids [B, L], padding after the end token."""
    length = self.spec.example_shape[0]
    params = state.params

    def step(i, buf):
      inputs = text_models.decoder_inputs(buf, text_data.BOS)
      logits = self.model.apply({"params": params}, z, inputs, method="logits")
      nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), -1)
      return buf.at[:, i].set(nxt.astype(buf.dtype))

    buf = jax.lax.fori_loop(0, length, step, jnp.zeros((z.shape[0], length), jnp.int32))
    ended = jnp.cumsum(buf == text_data.EOS, axis=1) - (buf == text_data.EOS)
    return jnp.where(ended > 0, text_data.PAD, buf)

  def reconstruct(self, state, tokens):
    """The documents decoded greedily from their codes: token ids [B, L]."""
    return self.generate(state, self.embed(state, tokens))

  def prior_samples(self, state, rng, n: int):
    """n documents decoded greedily from prior draws (text_vae). [n, L]"""
    if not self.variational:
      raise UsageError(f"--model={self.cfg.model} draws no samples (text_vae does)")
    return self.generate(state, jax.random.normal(rng, (n, self.cfg.latent_dim)))


@register
class TextLanguageModel(SingleNetworkFamily):
  """`text_lm`: text_ae's causal decoder without a code, trained by teacher forcing on the
  documents' next tokens. `--word_dropout` and `--token_mask_rate` do not apply (there is no
  code for dropped inputs to be read from, nor an encoder); `--dropout` does. Its
  `bits_per_token` and `bits_per_byte` are the exact -log2 p(x) of the documents (per token,
  per byte), the figures the VAE's ELBO and IWAE bounds are read against; its anomaly score
  is the document's nats per token."""

  models = ("text_lm",)
  takes_text = True
  progress_keys = ("loss", "token_acc")

  @classmethod
  def validate(cls, cfg):
    validate_transformer(cfg)

  def __init__(self, cfg, spec):
    require_text(cfg, spec)
    super().__init__(cfg, spec)

  def make_model(self):
    return text_models.TextLanguageModel(**transformer_args(self))

  def init_params(self, rng):
    return self.model.init(rng, jnp.zeros((1,) + tuple(self.spec.example_shape), jnp.int32))[
      "params"
    ]

  def _token_nll(self, params, tokens, rng=None):
    """(cross-entropy [B, L] on real tokens, logits [B, L, V])."""
    rngs = {"dropout": rng} if rng is not None and self.cfg.dropout else {}
    inputs = text_models.decoder_inputs(tokens, text_data.BOS)
    logits = self.model.apply({"params": params}, inputs, rngs=rngs)
    mask = (tokens != text_data.PAD).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens) * mask, logits

  def loss(self, params, batch, rng):
    tokens = batch["image"]
    nll, logits = self._token_nll(params, tokens, rng)
    mask = tokens != text_data.PAD
    count = jnp.maximum(jnp.sum(mask), 1)
    acc = jnp.sum((jnp.argmax(logits, -1) == tokens) & mask) / count
    return jnp.sum(nll) / count, {"token_acc": acc}

  def eval_metrics(self, state, batch, rng):
    tokens = batch["image"]
    nll, logits = self._token_nll(state.params, tokens)
    mask = tokens != text_data.PAD
    count = jnp.maximum(jnp.sum(mask, axis=1), 1)
    total = jnp.sum(nll, axis=1)
    return {
      "token_acc": jnp.sum((jnp.argmax(logits, -1) == tokens) & mask, axis=1) / count,
      "nll": total,
      **document_bits(total, tokens, self.spec.vocab_size),
    }

  def images(self, state, batch, rng):
    return {}

  def score(self, state, tokens):
    """Anomaly score: the document's nats per token. [B]"""
    nll, _ = self._token_nll(state.params, tokens)
    return jnp.sum(nll, axis=1) / jnp.maximum(jnp.sum(tokens != text_data.PAD, axis=1), 1)
