"""GAIN: a generator fills a table's missing cells against a discriminator that tells which cells
were filled (Yoon, Jordon & van der Schaar, ICML 2018), on dlu's encoded columns.

The generator G reads a row x̃ (observed cells as they are, missing ones U(0, NOISE) noise) and
its mask m, and outputs one value per encoded column in the column's own terms (dlu.ops.tabular:
numbers linear, booleans sigmoid, categories softmax over their levels). The imputed row is
x̂ = m * x + (1 - m) * G(x̃, m). The discriminator D reads x̂ and the hint h and predicts the
mask, one logit per feature column (a category's levels together). The hint (GAIN's): each
feature column's mask with probability `--gain_hint_rate`, else 0.5 ("not told").

Losses: D, the binary cross-entropy of its logits against the mask; G, minus the mean over the
missing cells of log D(x̂) (fool D where it filled) plus `--gain_alpha` times its per-type
reconstruction loss (tabular.batch_loss) on the observed cells. At each step `--hide_rate` of
the observed cells are hidden from G's input (and so from D's mask) while the reconstruction
loss still reads them: cells G fills whose answer is known.

State: params and opt_state are {"generator", "discriminator"}; one optax optimizer per network
(--g_learning_rate, --d_learning_rate, default --learning_rate). One train step updates both
from one forward: D's loss sees x̂ as a constant, G's sees D as one (a simultaneous step, as in
dlu.families.gan). `reconstruct` is G's output on a row read with its missing cells at the
noise's mean (deterministic), which `Run.impute` takes at the missing cells.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from dlu.config import require_non_negative
from dlu.config.model_flags import int_list
from dlu.errors import UsageError
from dlu.families.base import Family, TrainState, per_device_rng, register
from dlu.models import layers
from dlu.ops import tabular
from dlu.runtime import optim

flags.DEFINE_float(
  "gain_hint_rate",
  0.9,
  "gain: the share of each row's mask cells the discriminator is told (the hint); the others "
  "read 0.5.",
)
flags.DEFINE_float(
  "gain_alpha",
  100.0,
  "gain: weight of the generator's reconstruction loss on the observed cells beside its "
  "adversarial loss on the missing ones (100 as GAIN; 30-1000 measured alike, 10 and 1 worse).",
)
flags.DEFINE_list(
  "gain_widths",
  ["64", "64"],
  "gain: hidden widths of the generator and of the discriminator (relu MLPs).",
)

#: Missing cells of the generator's input are U(0, NOISE) (GAIN's), in the model's units.
NOISE = 0.01


@register
class GAIN(Family):
  """Tables read with --impute=model (missing cells masked), numbers only or with column kinds."""

  models = ("gain",)
  takes_missing = True
  progress_keys = ("d_loss", "g_adv", "recon_loss")

  @classmethod
  def validate(cls, cfg):
    int_list(cfg.gain_widths, "gain_widths")
    if not 0 <= cfg.gain_hint_rate <= 1:
      raise UsageError(
        f"--gain_hint_rate is a share of cells: must be in [0, 1], got {cfg.gain_hint_rate!r}"
      )
    require_non_negative(cfg, "gain_alpha")
    if not 0 <= cfg.hide_rate < 1:
      raise UsageError(f"--hide_rate is a share of cells: must be in [0, 1), got {cfg.hide_rate!r}")
    for name in ("g_learning_rate", "d_learning_rate"):
      if getattr(cfg, name) is not None and not getattr(cfg, name) > 0:
        raise UsageError(
          f"--{name} must be > 0 (or unset for --learning_rate), got {getattr(cfg, name)!r}"
        )
    if cfg.optimizer == "gd":
      raise UsageError("--optimizer=gd (full-batch) does not apply to --model=gain; use adam, ...")

  def __init__(self, cfg, spec):
    super().__init__(cfg, spec)
    if spec.is_image or spec.is_series or spec.is_text:
      kind = "images" if spec.is_image else "series" if spec.is_series else "text"
      raise UsageError(
        f"--model=gain fills a table's missing cells; the data are {kind}, not a table "
        "(--dataset=csv:PATH, parquet:PATH or json:PATH)"
      )
    if not spec.masked:
      raise UsageError(
        "--model=gain reads a table's missing cells through their mask: it needs --impute=model "
        f"(got {cfg.impute}; --impute=auto is none on a table with no missing cell)"
      )
    d = spec.example_shape[0]
    groups = spec.columns or tuple(("numeric", j, j + 1) for j in range(d))
    #: the feature column of each encoded column [D], and each feature column's first one [C].
    self.owner = np.array([c for c, (_, a, b) in enumerate(groups) for _ in range(a, b)])
    self.first = np.array([a for _, a, _ in groups])
    widths = int_list(cfg.gain_widths, "gain_widths")
    mlp = lambda out: layers.MLP(
      widths + (out,), kernel_init=self.kernel_init, dtype=self.compute_dtype
    )
    self.generator, self.discriminator = mlp(d), mlp(len(groups))
    self.g_tx = optim.make_optimizer(cfg, learning_rate=cfg.g_learning_rate or cfg.learning_rate)
    self.d_tx = optim.make_optimizer(cfg, learning_rate=cfg.d_learning_rate or cfg.learning_rate)

  def prepare(self, dataset, ctx):
    if not self.cfg.hide_rate and not np.isnan(np.asarray(dataset.x_train)).any():
      raise UsageError(
        f"--model=gain learns to fill cells, and {dataset.name} has no missing cell in its "
        "training split while --hide_rate=0: set --hide_rate > 0 (cells hidden at each step)"
      )

  # --- Networks.

  def generate(self, g_params, x: jax.Array, seen: jax.Array, noise: jax.Array) -> jax.Array:
    """G's outputs (numbers, logits) [B, D] for rows `x` [B, D] whose cells `seen` [B, D] are
    observed; the others read `noise` (broadcast to [B, D])."""
    x_in = jnp.where(seen, x, noise)
    inputs = jnp.concatenate([x_in, seen.astype(x.dtype)], axis=-1)
    return layers.to_float32(self.generator.apply({"params": g_params}, inputs))

  def critic(self, d_params, x_hat: jax.Array, hint: jax.Array) -> jax.Array:
    """D's logit that each feature column of the imputed rows was observed. [B, C]"""
    inputs = jnp.concatenate([x_hat, hint.astype(x_hat.dtype)], axis=-1)
    return layers.to_float32(self.discriminator.apply({"params": d_params}, inputs))

  def imputed(self, x: jax.Array, seen: jax.Array, out: jax.Array) -> jax.Array:
    """m * x + (1 - m) * G: observed cells kept, the others G's, in the columns' terms. [B, D]"""
    return jnp.where(seen, jnp.nan_to_num(x), tabular.reconstruction(out, self.spec.columns))

  def init_state(self, rng):
    g_rng, d_rng = jax.random.split(rng)
    d, c = self.spec.example_shape[0], len(self.first)
    g_params = self.generator.init(g_rng, jnp.zeros((1, 2 * d)))["params"]
    d_params = self.discriminator.init(d_rng, jnp.zeros((1, d + c)))["params"]
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params={"generator": g_params, "discriminator": d_params},
      opt_state={"generator": self.g_tx.init(g_params), "discriminator": self.d_tx.init(d_params)},
    )

  # --- The step.

  def train_step(self, state, batch, rng, *, axis_name=None):
    cfg = self.cfg
    rng = per_device_rng(jax.random.fold_in(rng, state.step), axis_name)
    hide_key, noise_key, hint_key = jax.random.split(rng, 3)
    x = self.normalize(batch["image"])  # [B, D], NaN where missing
    x_in = x
    if cfg.hide_rate:
      x_in = tabular.hide(x, hide_key, cfg.hide_rate, self.spec.columns)
    seen = tabular.observed(x_in)  # [B, D]: what G reads (hidden cells are missing to it)
    mask = seen[:, self.first].astype(jnp.float32)  # [B, C]: D's targets
    noise = jax.random.uniform(noise_key, x.shape, maxval=NOISE)
    told = jax.random.bernoulli(hint_key, cfg.gain_hint_rate, mask.shape)
    hint = jnp.where(told, mask, 0.5)
    g_params, d_params = state.params["generator"], state.params["discriminator"]

    def joint(g_params, d_params):
      out = self.generate(g_params, x_in, seen, noise)
      x_hat = self.imputed(x_in, seen, out)
      d_logit = self.critic(d_params, jax.lax.stop_gradient(x_hat), hint)
      d_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(d_logit, mask))
      g_logit = self.critic(jax.lax.stop_gradient(d_params), x_hat, hint)
      filled = 1.0 - mask
      # -log D(x̂) = softplus(-logit), over the cells G filled.
      g_adv = jnp.sum(filled * jax.nn.softplus(-g_logit)) / jnp.maximum(jnp.sum(filled), 1.0)
      recon = tabular.batch_loss(out, x, self.spec.columns)  # every observed cell, hidden too
      metrics = {
        "d_loss": d_loss,
        "g_adv": g_adv,
        "recon_loss": recon,
        "d_accuracy": jnp.mean((d_logit > 0) == (mask > 0.5)),
      }
      return d_loss + g_adv + cfg.gain_alpha * recon, metrics

    (g_grads, d_grads), metrics = jax.grad(joint, argnums=(0, 1), has_aux=True)(g_params, d_params)
    if axis_name is not None:
      g_grads, d_grads, metrics = jax.lax.pmean((g_grads, d_grads, metrics), axis_name)
    g_updates, g_opt = self.g_tx.update(g_grads, state.opt_state["generator"], g_params)
    d_updates, d_opt = self.d_tx.update(d_grads, state.opt_state["discriminator"], d_params)
    g_params = optax.apply_updates(g_params, g_updates)
    d_params = optax.apply_updates(d_params, d_updates)
    metrics.update(
      g_grad_norm=optax.tree.norm(g_grads),
      d_grad_norm=optax.tree.norm(d_grads),
      g_param_norm=optax.tree.norm(g_params),
      d_param_norm=optax.tree.norm(d_params),
    )
    return state.replace(
      step=state.step + 1,
      params={"generator": g_params, "discriminator": d_params},
      opt_state={"generator": g_opt, "discriminator": d_opt},
    ), metrics

  # --- Evaluation and use.

  def _outputs(self, state, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(rows [B, D], observed [B, D], G's outputs [B, D]) with missing cells at NOISE / 2."""
    x = self.normalize(images)
    seen = tabular.observed(x)
    return x, seen, self.generate(state.params["generator"], x, seen, NOISE / 2)

  def reconstruct(self, state, images):
    """G's values for every cell, in the model's units (booleans and categories as
    probabilities); `Run.impute` takes them at the missing cells. [B, D]"""
    return tabular.reconstruction(self._outputs(state, images)[2], self.spec.columns)

  def score(self, state, images):
    """The per-type loss of G's outputs on the observed cells (which it reads). [B]"""
    x, _, out = self._outputs(state, images)
    return tabular.row_loss(out, x, self.spec.columns)

  def embed(self, state, images):
    """The imputed rows: observed cells as they are, the missing ones G's. [B, D]"""
    x, seen, out = self._outputs(state, images)
    return self.imputed(x, seen, out)

  def eval_metrics(self, state, batch, rng):
    """recon_loss and mse on the observed cells G reads; fill_loss: the per-type loss on
    observed cells hidden from G at the rate --hide_rate (0.25 where it is 0), averaged over
    each row's hidden cells (0 for a row with none hidden)."""
    x, seen, out = self._outputs(state, batch["image"])
    recon = tabular.reconstruction(out, self.spec.columns)
    sq = jnp.where(seen, jnp.square(recon - jnp.nan_to_num(x)), 0.0)
    hidden_in = tabular.hide(x, rng, self.cfg.hide_rate or 0.25, self.spec.columns)
    hidden_seen = tabular.observed(hidden_in)
    out_hidden = self.generate(state.params["generator"], hidden_in, hidden_seen, NOISE / 2)
    target = jnp.where(hidden_seen, jnp.nan, x)  # only the cells hidden from G
    return {
      "mse": jnp.sum(sq, axis=-1) / jnp.maximum(jnp.sum(seen, axis=-1), 1),
      "recon_loss": tabular.row_loss(out, x, self.spec.columns),
      "fill_loss": tabular.row_loss(out_hidden, target, self.spec.columns),
    }
