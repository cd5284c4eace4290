"""Deep SVDD (Ruff et al. 2018): one-class training that pulls the codes of the data towards a
fixed centre c; the anomaly score is the squared distance ||z - c||^2.

The encoder has no bias terms; c is the mean code of the initial network on (up to 2,048 of)
the training examples, each coordinate nearer 0 than `SVDD_EPS` pushed out to +-SVDD_EPS, as
the paper's code does (a zero coordinate could be matched by zero weights). c is kept in the
state's `extra`, so a restored run scores against the centre it trained with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlu.config import require_positive
from dlu.config.model_flags import int_list
from dlu.families.base import SingleNetworkFamily, TrainState, register
from dlu.models import svdd as svdd_models

#: Coordinates of the centre nearer 0 than this are set to +-SVDD_EPS.
SVDD_EPS = 0.1
#: Training examples whose initial codes average to the centre.
CENTRE_EXAMPLES = 2048


def centre(codes: jax.Array, eps: float = SVDD_EPS) -> jax.Array:
  """The mean code [D] of `codes` [N, D], small coordinates pushed to +-eps."""
  c = jnp.mean(codes, axis=0)
  return jnp.where(jnp.abs(c) < eps, jnp.where(c < 0, -eps, eps), c)


@register
class DeepSVDD(SingleNetworkFamily):
  models = ("svdd_mlp",)

  @classmethod
  def validate(cls, cfg):
    require_positive(cfg, "latent_dim")
    int_list(cfg.widths, "widths")

  def make_model(self):
    return svdd_models.SVDDEncoder(
      widths=int_list(self.cfg.widths, "widths"),
      latent_dim=self.cfg.latent_dim,
      kernel_init=self.kernel_init,
      dtype=self.compute_dtype,
    )

  def prepare(self, dataset, ctx):
    self._centre_inputs = np.asarray(dataset.x_train[:CENTRE_EXAMPLES])

  def init_state(self, rng: jax.Array) -> TrainState:
    params = self.init_params(rng)
    x = getattr(self, "_centre_inputs", None)
    if x is None:  # no data given (a bare family): zeros give the centre +-eps
      x = np.zeros((1,) + self.spec.example_shape, np.float32)
    z = self.model.apply({"params": params}, self.normalize(jnp.asarray(x)))
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=self.tx.init(params),
      extra={"centre": centre(z)},
    )

  def train_step(self, state, batch, rng, *, axis_name=None):
    batch = {**batch, "centre": state.extra["centre"]}
    return super().train_step(state, batch, rng, axis_name=axis_name)

  def distances(self, params, c, images: jax.Array) -> jax.Array:
    z = self.model.apply({"params": params}, self.normalize(images))
    return jnp.sum(jnp.square(z - c), axis=-1)  # [B]

  def loss(self, params, batch, rng):
    return jnp.mean(self.distances(params, batch["centre"], batch["image"])), {}

  def eval_metrics(self, state, batch, rng):
    return {"distance": self.distances(state.params, state.extra["centre"], batch["image"])}

  def score(self, state, images):
    """||z - c||^2. [B]"""
    return self.distances(state.params, state.extra["centre"], images)

  def embed(self, state, images):
    return self.model.apply({"params": state.params}, self.normalize(images))
