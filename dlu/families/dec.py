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
import optax
from absl import flags

from dlu import checkpointing, clustering, data, evaluation, losses, parallel, steps
from dlu import flags as dlu_flags
from dlu.errors import UsageError
from dlu.families.autoencoder import Autoencoder
from dlu.families.base import EvalContext, Family, TrainState, get, norms, register
from dlu.models import dec as dec_models

flags.DEFINE_string("init_from", None,
                    "dec/idec: workdir of the trained autoencoder run to start from.")
flags.DEFINE_integer("n_clusters", 0,
                     "Clusters for dec/idec and experiments.evaluate; 0: the dataset's class count.")
flags.DEFINE_integer("target_update_every", 140,
                     "dec/idec: recompute the target distribution over the training split every N steps.")
flags.DEFINE_float("gamma", 0.1, "idec: weight of the clustering (KL) loss beside the reconstruction loss.")
flags.DEFINE_float("alpha", 1.0, "dec/idec: degrees of freedom of the Student-t kernel.")
flags.DEFINE_integer("kmeans_inits", 10, "k-means restarts (best inertia kept), for DEC's centroids "
                     "and experiments.evaluate.")

SCORES = ("acc", "nmi", "ari")


def num_clusters(cfg: dlu_flags.Config, dataset: data.ImageData) -> int:
  if cfg.n_clusters:
    return cfg.n_clusters
  if not dataset.num_classes:
    raise UsageError(f"--n_clusters is needed: {dataset.name} has no labels to count classes from")
  return dataset.num_classes


def has_checkpoint(workdir: str) -> bool:
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and any(d.isdigit() for d in os.listdir(path))


def load_autoencoder(workdir: str, spec, mesh) -> tuple[Autoencoder, TrainState]:
  """The autoencoder family and trained state of the run in `workdir`."""
  cfg = dlu_flags.config_from_flagfile(os.path.join(workdir, "flags.txt"))
  family_cls = get(cfg.model)
  if not issubclass(family_cls, Autoencoder):
    raise UsageError(f"--init_from={workdir!r} holds a --model={cfg.model} run; "
                     "expected an autoencoder (ae_seed, ae_mlp, ae_conv)")
  family = family_cls(cfg, spec)
  if not has_checkpoint(workdir):
    raise UsageError(f"--init_from={workdir!r} holds no checkpoint: train the autoencoder first")
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
  try:
    state = ckpt.restore(steps.make_init(family, mesh)[1])
  finally:
    ckpt.close()
  return family, state


@register
class DEC(Family):
  """Encoder + clustering layer (dec), plus the decoder's reconstruction loss (idec)."""
  models = ("dec", "idec")
  needs_index = True

  @classmethod
  def validate(cls, cfg):
    if not cfg.init_from:
      raise UsageError(f"--model={cfg.model} needs --init_from=WORKDIR, a trained autoencoder run")
    if not os.path.isfile(os.path.join(cfg.init_from, "flags.txt")):
      raise UsageError(f"--init_from={cfg.init_from!r} is not the workdir of a dlu run "
                       "(it has no flags.txt)")
    if cfg.n_clusters < 0:
      raise UsageError(f"--n_clusters must be >= 0 (0: the class count), got {cfg.n_clusters!r}")
    if cfg.target_update_every < 1:
      raise UsageError(f"--target_update_every must be a positive integer, "
                       f"got {cfg.target_update_every!r}")
    if not cfg.alpha > 0:
      raise UsageError(f"--alpha must be > 0, got {cfg.alpha!r}")
    if not cfg.gamma >= 0:
      raise UsageError(f"--gamma must be >= 0, got {cfg.gamma!r}")
    if cfg.kmeans_inits < 1:
      raise UsageError(f"--kmeans_inits must be a positive integer, got {cfg.kmeans_inits!r}")

  # --- Host-side set-up.
  def prepare(self, dataset, ctx):
    ae, ae_state = load_autoencoder(self.cfg.init_from, self.spec, ctx.mesh)
    if ae.cfg.pixel_range != self.cfg.pixel_range or ae.cfg.dataset != self.cfg.dataset:
      raise UsageError(f"--init_from={self.cfg.init_from!r} was trained with --dataset="
                       f"{ae.cfg.dataset} --pixel_range={ae.cfg.pixel_range}; this run has "
                       f"--dataset={self.cfg.dataset} --pixel_range={self.cfg.pixel_range}")
    k = num_clusters(self.cfg, dataset)
    if has_checkpoint(ctx.workdir):  # resuming or evaluating: the checkpoint holds the centroids
      z_dim = jax.eval_shape(ae.embed, ae_state, jnp.zeros((1,) + self.spec.image_shape)).shape[-1]
      centroids = np.zeros((k, z_dim), np.float32)
    else:
      embed = steps.make_embed(ae, ctx.mesh)
      z = evaluation.embed_split(embed, ae_state, dataset.x_train, mesh=ctx.mesh,
                                 batch_size=ctx.batch_size)
      centroids = clustering.kmeans(z, k, seed=self.cfg.seed, n_init=self.cfg.kmeans_inits)[1]
    self.set_pretrained(ae, jax.device_get(ae_state.params), centroids)
    self.set_data(dataset, ctx)

  def set_pretrained(self, ae: Autoencoder, ae_params: Any, centroids: np.ndarray) -> None:
    """The autoencoder to start from and the initial centroids [K, D]."""
    self.ae, self.ae_params = ae, ae_params
    self.centroids = np.asarray(centroids, np.float32)

  def set_data(self, dataset: data.ImageData, ctx: EvalContext) -> None:
    """The training split the targets are computed over, and where to compute them."""
    self.dataset, self.ctx = dataset, ctx
    self._probs = steps.jit_over_images(self.cluster_probs, ctx.mesh)

  @property
  def tx(self) -> optax.GradientTransformation:
    if not hasattr(self, "_tx"):
      from dlu import optim
      self._tx = optim.make_optimizer(self.cfg)
    return self._tx

  @property
  def scored(self) -> bool:
    return getattr(self, "dataset", None) is not None and self.dataset.y_train is not None

  # --- Pure functions (jitted by the loop).
  def init_state(self, rng):
    del rng  # everything starts from the pretrained run
    params = {"ae": jax.tree.map(jnp.asarray, self.ae_params),
              "centroids": jnp.asarray(self.centroids)}
    n, k = self.spec.num_train, self.centroids.shape[0]
    extra = {"p": jnp.zeros((n, k), jnp.float32), "assign": jnp.full((n,), -1, jnp.int32),
             "assign_changed": jnp.ones((), jnp.float32)}
    if self.scored:
      extra.update({name: jnp.zeros((), jnp.float32) for name in SCORES})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), extra=extra)

  def encode(self, ae_params, x: jax.Array) -> jax.Array:
    return self.ae.model.apply({"params": ae_params}, x, method="encode")  # [B, D]

  def loss(self, params, batch, extra) -> tuple[jax.Array, dict[str, jax.Array]]:
    x = self.normalize(batch["image"])
    z = self.encode(params["ae"], x)
    q = dec_models.soft_assign(z, params["centroids"], self.cfg.alpha)  # [B, K]
    p = extra["p"][batch["index"]]  # [B, K], fixed between target updates
    kl = jnp.mean(dec_models.kl_divergence(p, q))
    if self.cfg.model == "dec":
      return kl, {"kl": kl}
    out = self.ae.model.apply({"params": params["ae"]}, z, method="decode")
    recon = jnp.mean(self.ae.reconstruction_error(out, x))
    return recon + self.cfg.gamma * kl, {"kl": kl, "recon": recon}

  def train_step(self, state, batch, rng, *, axis_name=None):
    del rng  # deterministic given the targets
    grad_fn = jax.value_and_grad(self.loss, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, batch, state.extra)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      loss, metrics = jax.lax.pmean((loss, metrics), axis_name)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Scores of the training split at the last target update (labels only score).
    refreshed = {k: v for k, v in state.extra.items() if k not in ("p", "assign")}
    metrics = {"loss": loss, **metrics, **refreshed,
               **norms(grads=grads, params=params, updates=updates)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def cluster_probs(self, state, images: jax.Array) -> jax.Array:
    z = self.encode(state.params["ae"], self.normalize(images))
    return dec_models.soft_assign(z, state.params["centroids"], self.cfg.alpha)  # [B, K]

  def eval_metrics(self, state, batch, rng):
    x = self.normalize(batch["image"])
    z = self.encode(state.params["ae"], x)
    q = dec_models.soft_assign(z, state.params["centroids"], self.cfg.alpha)
    out = self.ae.model.apply({"params": state.params["ae"]}, z, method="decode")
    recon = jax.nn.sigmoid(out) if self.ae.cfg.recon_loss == "bce" else out
    return {"mse": losses.mse(recon, x), "confidence": jnp.max(q, axis=-1)}

  def images(self, state, batch, rng):
    return self.ae.images(state.replace(params=state.params["ae"]), batch, rng)

  def embed(self, state, images):
    return self.encode(state.params["ae"], self.normalize(images))

  # --- Host-side hooks.
  def assignments(self, state, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft assignments [N, K] and hard ones [N] of every row of `x`."""
    return evaluation.cluster_assignments(self._probs, state, x, mesh=self.ctx.mesh,
                                          batch_size=self.ctx.batch_size)

  def refresh_target(self, state: TrainState) -> TrainState:
    """Recomputes p over the whole training split; records how many assignments moved."""
    q, assign = self.assignments(state, self.dataset.x_train)
    old = np.asarray(jax.device_get(state.extra["assign"]))
    extra = {"p": clustering.target_distribution(q), "assign": assign,
             "assign_changed": np.float32(np.mean(assign != old))}
    if self.scored:
      extra.update({k: np.float32(v)
                    for k, v in clustering.scores(self.dataset.y_train, assign).items()})
    return state.replace(extra=jax.device_put(extra, parallel.replicated(self.ctx.mesh)))

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
