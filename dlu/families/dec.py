"""Deep embedded clustering: DEC (Xie et al., 2016) and IDEC (Guo et al., 2017).

Both start from a trained autoencoder run (`--init_from`): its encoder maps images
to embeddings, k-means on the training embeddings places the centroids, and a
Student-t kernel gives soft assignments q. Every `--target_update_every` steps the
sharpened target p is recomputed over the WHOLE training split (host side, between
steps) and kept in the state, one row per example; each step pulls the rows of its
batch by index and minimises KL(p || q). IDEC keeps the decoder and adds the
reconstruction loss, with the KL term weighted by `--gamma`, so the embedding cannot
drift away from what describes the images.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from dlu import config, data
from dlu.config import require_above_zero, require_non_negative, require_positive
from dlu.config.model_flags import num_clusters
from dlu.errors import UsageError
from dlu.families.autoencoder import Autoencoder
from dlu.families.base import EvalContext, SingleNetworkFamily, TrainState, get, register
from dlu.metrics import clustering
from dlu.ops import losses
from dlu.runtime import batched_eval, checkpointing, parallel

flags.DEFINE_string(
  "init_from", None, "dec/idec: workdir of the trained autoencoder run to start from."
)
flags.DEFINE_integer(
  "target_update_every",
  140,
  "dec/idec: recompute the target distribution over the training split every N steps.",
)
flags.DEFINE_float(
  "gamma", 0.1, "idec: weight of the clustering (KL) loss beside the reconstruction loss."
)
flags.DEFINE_float("alpha", 1.0, "dec/idec: degrees of freedom of the Student-t kernel.")

SCORES = ("acc", "nmi", "ari")


def has_checkpoint(workdir: str) -> bool:
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and any(d.isdigit() for d in os.listdir(path))


def load_autoencoder(
  workdir: str, spec, mesh, compute_dtype: str | None = None
) -> tuple[Autoencoder, TrainState]:
  """The autoencoder family and trained state of the run in `workdir`, computing in
  `compute_dtype` (a --compute_dtype value; None: the one that run trained with)."""
  cfg = config.config_from_flagfile(os.path.join(workdir, "flags.txt"))
  if compute_dtype is not None:
    cfg = cfg.replace(compute_dtype=compute_dtype)
  family_cls = get(cfg.model)
  if not issubclass(family_cls, Autoencoder):
    raise UsageError(
      f"--init_from={workdir!r} holds a --model={cfg.model} run; "
      "expected an autoencoder (ae_seed, ae_mlp, ae_conv, ae_conv1d, ae_seq)"
    )
  if spec.is_series and not family_cls.takes_series:
    raise UsageError(
      f"--init_from={workdir!r} holds a --model={cfg.model} run, which takes no time series"
    )
  family = family_cls(cfg, spec)
  if not has_checkpoint(workdir):
    raise UsageError(f"--init_from={workdir!r} holds no checkpoint: train the autoencoder first")
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    state = ckpt.restore(parallel.make_init(family, mesh)[1])
  finally:
    ckpt.close()
  return family, state


@register
class DEC(SingleNetworkFamily):
  """Encoder + clustering layer (dec), plus the decoder's reconstruction loss (idec).

  One parameter tree {"ae", "centroids"} and the base class's optimizer and step; the step
  adds each example's row of the target to its batch (`target`), and the loss is
  deterministic given it.
  """

  models = ("dec", "idec")
  needs_index = True
  takes_series = True  # when the autoencoder it starts from takes them
  takes_embedded = True  # its encoder is the autoencoder's, embeddings included

  @classmethod
  def validate(cls, cfg):
    if not cfg.init_from:
      raise UsageError(f"--model={cfg.model} needs --init_from=WORKDIR, a trained autoencoder run")
    if not os.path.isfile(os.path.join(cfg.init_from, "flags.txt")):
      raise UsageError(
        f"--init_from={cfg.init_from!r} is not the workdir of a dlu run (it has no flags.txt)"
      )
    require_positive(cfg, "target_update_every")
    require_above_zero(cfg, "alpha")
    require_non_negative(cfg, "gamma")

  # --- Host-side set-up.
  def prepare(self, dataset, ctx):
    # The encoder computes in this run's --compute_dtype (its parameters are float32 either way).
    ae, ae_state = load_autoencoder(self.cfg.init_from, self.spec, ctx.mesh, self.cfg.compute_dtype)
    if ae.cfg.pixel_range != self.cfg.pixel_range or ae.cfg.dataset != self.cfg.dataset:
      raise UsageError(
        f"--init_from={self.cfg.init_from!r} was trained with --dataset="
        f"{ae.cfg.dataset} --pixel_range={ae.cfg.pixel_range}; this run has "
        f"--dataset={self.cfg.dataset} --pixel_range={self.cfg.pixel_range}"
      )
    k = num_clusters(self.cfg, dataset.num_classes, dataset.name)
    if has_checkpoint(ctx.workdir):  # resuming or evaluating: the checkpoint holds the centroids
      z_dim = jax.eval_shape(ae.embed, ae_state, jnp.zeros((1,) + self.spec.example_shape)).shape[
        -1
      ]
      centroids = np.zeros((k, z_dim), np.float32)
    else:
      embed = parallel.make_embed(ae, ctx.mesh)
      z = batched_eval.embed_split(
        embed, ae_state, dataset.x_train, mesh=ctx.mesh, batch_size=ctx.batch_size
      )
      centroids = clustering.kmeans(z, k, seed=self.cfg.seed, n_init=self.cfg.kmeans_inits)[1]
    self.set_pretrained(ae, jax.device_get(ae_state.params), centroids)
    self.set_data(dataset, ctx)

  def set_pretrained(self, ae: Autoencoder, ae_params: Any, centroids: np.ndarray) -> None:
    """The autoencoder to start from and the initial centroids [K, D]."""
    self.ae, self.ae_params = ae, ae_params
    self.centroids = np.asarray(centroids, np.float32)

  def set_data(self, dataset: data.Dataset, ctx: EvalContext) -> None:
    """The training split the targets are computed over, and where to compute them."""
    self.dataset, self.ctx = dataset, ctx
    self._probs = parallel.jit_over_images(self.cluster_probs, ctx.mesh)

  @property
  def scored(self) -> bool:
    return getattr(self, "dataset", None) is not None and self.dataset.y_train is not None

  # --- Pure functions (jitted by the loop).
  def init_state(self, rng):
    del rng  # everything starts from the pretrained run
    params = {
      "ae": jax.tree.map(jnp.asarray, self.ae_params),
      "centroids": jnp.asarray(self.centroids),
    }
    n, k = self.spec.num_train, self.centroids.shape[0]
    extra = {
      "p": jnp.zeros((n, k), jnp.float32),
      "assign": jnp.full((n,), -1, jnp.int32),
      "assign_changed": jnp.ones((), jnp.float32),
    }
    if self.scored:
      extra.update({name: jnp.zeros((), jnp.float32) for name in SCORES})
    return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params), extra=extra
    )

  def encode(self, ae_params, images: jax.Array) -> jax.Array:
    return self.ae.code(ae_params, images)  # [B, D]

  def loss(self, params, batch, rng) -> tuple[jax.Array, dict[str, jax.Array]]:
    del rng  # deterministic given the targets
    x = batch["image"]
    z = self.encode(params["ae"], x)
    q = losses.soft_assign(z, params["centroids"], self.cfg.alpha)  # [B, K]
    p = batch["target"]  # [B, K], fixed between target updates
    kl = jnp.mean(losses.kl_divergence(p, q))
    if self.cfg.model == "dec":
      return kl, {"kl": kl}
    recon = jnp.mean(self.ae.code_error(params["ae"], z, x))
    return recon + self.cfg.gamma * kl, {"kl": kl, "recon": recon}

  def train_step(self, state, batch, rng, *, axis_name=None):
    batch = {**batch, "target": state.extra["p"][batch["index"]]}
    state, metrics = super().train_step(state, batch, rng, axis_name=axis_name)
    # Scores of the training split at the last target update (labels only score).
    metrics.update({k: v for k, v in state.extra.items() if k not in ("p", "assign")})
    return state, metrics

  def cluster_probs(self, state, images: jax.Array) -> jax.Array:
    z = self.encode(state.params["ae"], images)
    return losses.soft_assign(z, state.params["centroids"], self.cfg.alpha)  # [B, K]

  def eval_metrics(self, state, batch, rng):
    x = batch["image"]
    z = self.encode(state.params["ae"], x)
    q = losses.soft_assign(z, state.params["centroids"], self.cfg.alpha)
    return {"mse": self.ae.code_mse(state.params["ae"], z, x), "confidence": jnp.max(q, axis=-1)}

  def images(self, state, batch, rng):
    return self.ae.images(state.replace(params=state.params["ae"]), batch, rng)

  def embed(self, state, images):
    return self.encode(state.params["ae"], images)

  def reconstruct(self, state, images):
    return self.ae.reconstruct(state.replace(params=state.params["ae"]), images)

  def score(self, state, images):
    return self.ae.score(state.replace(params=state.params["ae"]), images)

  # --- Host-side hooks.
  def assignments(self, state, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft assignments [N, K] and hard ones [N] of every row of `x`."""
    return batched_eval.cluster_assignments(
      self._probs, state, x, mesh=self.ctx.mesh, batch_size=self.ctx.batch_size
    )

  def refresh_target(self, state: TrainState) -> TrainState:
    """Recomputes p over the whole training split; records how many assignments moved."""
    q, assign = self.assignments(state, self.dataset.x_train)
    old = np.asarray(jax.device_get(state.extra["assign"]))
    extra = {
      "p": clustering.target_distribution(q),
      "assign": assign,
      "assign_changed": np.float32(np.mean(assign != old)),
    }
    if self.scored:
      extra.update(
        {k: np.float32(v) for k, v in clustering.scores(self.dataset.y_train, assign).items()}
      )
    return state.replace(extra=parallel.put_replicated(self.ctx.mesh, extra))

  def step_boundaries(self):
    return (self.cfg.target_update_every,)

  def before_step(self, state, step):
    if step % self.cfg.target_update_every:
      return state
    if state.step.ndim:  # replicated for pmap: one copy per device on a leading axis
      host = jax.device_get(parallel.unreplicate(state))
      return parallel.replicate_for_pmap(jax.device_get(self.refresh_target(host)))
    return self.refresh_target(state)

  def split_metrics(self, state, dataset, ctx):
    if dataset.y_test is None:
      return {}
    _, assign = self.assignments(state, dataset.x_test)
    return clustering.scores(dataset.y_test, assign)
