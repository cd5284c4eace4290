"""Contrastive representations of text (text:PATH): `text_simcse`, in the manner of SimCSE
(Gao et al., 2021).

The SimCLR family (dlu/families/contrastive.py: NT-Xent over the global batch, `--temperature`,
`--projection_dims`, and `--cluster_head` for contrastive clustering's head) on text_ae's
Transformer encoder and mean-pooled `--latent_dim` code (`text_models.TextContrastiveNet`).
The two views of a document differ by the encoder's dropout (`--dropout`, drawn afresh for each
view, as unsupervised SimCSE does) and optionally by the views themselves (`text_views`): a
random span of at least `--text_view_crop` of the document's tokens, and `--text_view_token_drop`
of its tokens deleted. `embed` returns the code L2-normalised for the clustering evaluator,
the probes, `Run.encode` and `Run.score(method=knn|cosine)`; like SimCLR the family has no
score of its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlu.config.model_flags import int_list
from dlu.data import text as text_data
from dlu.errors import UsageError
from dlu.families import text as text_family
from dlu.families.base import register
from dlu.families.contrastive import SimCLR
from dlu.models import text as text_models
from dlu.ops import losses


def text_views(rng: jax.Array, tokens: jax.Array, *, crop: float, token_drop: float) -> jax.Array:
  """A random view of each document of token ids [B, L] (0 padding after the tokens): a span
  of at least `crop` of its tokens (its length and start uniform), then each token that is not
  special deleted with probability `token_drop` (a view keeps at least its span's first token);
  the kept tokens close up from position 0, padding after them. [B, L]"""
  length = tokens.shape[1]
  pos = jnp.arange(length)[None]
  n = jnp.sum(tokens != text_data.PAD, axis=1, keepdims=True)  # [B, 1]
  k_len, k_start, k_drop = jax.random.split(rng, 3)
  low = jnp.minimum(jnp.ceil(crop * n).astype(n.dtype), n)
  span = low + jnp.floor(jax.random.uniform(k_len, n.shape) * (n - low + 1)).astype(n.dtype)
  span = jnp.minimum(span, n)
  start = jnp.floor(jax.random.uniform(k_start, n.shape) * (n - span + 1)).astype(n.dtype)
  start = jnp.minimum(start, n - span)
  keep = (pos >= start) & (pos < start + span)
  if token_drop:
    drop = jax.random.bernoulli(k_drop, token_drop, tokens.shape)
    drop = drop & (tokens >= text_data.NUM_SPECIAL) & (pos != start)
    keep = keep & ~drop
  order = jnp.argsort(jnp.where(keep, 0, 1), axis=1, stable=True)  # kept tokens first, in order
  moved = jnp.take_along_axis(tokens, order, axis=1)
  return jnp.where(pos < jnp.sum(keep, axis=1, keepdims=True), moved, text_data.PAD)


@register
class TextSimCSE(SimCLR):
  models = ("text_simcse",)
  takes_text = True

  @classmethod
  def validate(cls, cfg):
    super().validate(cfg)
    text_family.validate_transformer(cfg)
    if not 0 < cfg.text_view_crop <= 1:
      raise UsageError(
        f"--text_view_crop={cfg.text_view_crop}: expected a fraction of the document in (0, 1]"
      )
    if not 0 <= cfg.text_view_token_drop < 1:
      raise UsageError(
        f"--text_view_token_drop={cfg.text_view_token_drop}: expected a fraction in [0, 1)"
      )
    if not cfg.dropout and cfg.text_view_crop == 1 and not cfg.text_view_token_drop:
      raise UsageError(
        "--model=text_simcse: the two views of a document would be the same; set --dropout "
        "(SimCSE's noise), --text_view_crop < 1 or --text_view_token_drop > 0"
      )

  def __init__(self, cfg, spec):
    text_family.require_text(cfg, spec)
    super().__init__(cfg, spec)

  def make_model(self):
    return text_models.TextContrastiveNet(
      **text_family.transformer_args(self),
      projection=int_list(self.cfg.projection_dims, "projection_dims"),
      num_clusters=self.num_clusters,
    )

  def init_params(self, rng):
    dummy = jnp.zeros((1,) + tuple(self.spec.example_shape), jnp.int32)
    return self.model.init(rng, dummy)["params"]

  def two_views(self, tokens, rng):
    """Two independent random views of each document (token ids). [B, L] each"""
    cfg = self.cfg
    if cfg.text_view_crop == 1 and not cfg.text_view_token_drop:
      return tokens, tokens
    draw = lambda key: text_views(
      key, tokens, crop=cfg.text_view_crop, token_drop=cfg.text_view_token_drop
    )
    k1, k2 = jax.random.split(rng)
    return draw(k1), draw(k2)

  def contrast(self, params, tokens, rng, axis_name=None):
    """As SimCLR's, the encoder's dropout drawn afresh for every one of the 2B views."""
    v1, v2 = self.two_views(tokens, jax.random.fold_in(rng, 0))
    n = v1.shape[0]
    rngs = {"dropout": jax.random.fold_in(rng, 1)} if self.cfg.dropout else {}
    _, z, logits = self.model.apply({"params": params}, jnp.concatenate([v1, v2]), rngs=rngs)
    loss, top1 = losses.nt_xent(z[:n], z[n:], temperature=self.cfg.temperature, axis_name=axis_name)
    out = {"loss": loss, "top1": top1}
    if logits is not None:
      out["probs"] = jax.nn.softmax(logits)
    return out

  def images(self, state, batch, rng):
    return {}
