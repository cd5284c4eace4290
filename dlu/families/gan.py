"""The GAN family: DCGAN and MLP pairs with non-saturating, hinge or WGAN-GP losses.

State: params and opt_state are {"generator", "discriminator"}; extra holds the
generator's BatchNorm running averages ("batch_stats") and an exponential moving
average of its weights ("ema"), which evaluation, samples and sample-quality
metrics use (with the running averages).

One train step = `--d_steps` discriminator updates then one generator update, all in
one jitted program. The batch is split into d_steps strided slices (D step k sees
rows k, k + d_steps, ...: each device's shard holds rows of every slice), so with
d_steps > 1 each D update sees different real images, as in WGAN-GP's critic loop.
The last D update and the generator update share one generator forward pass on the
same noise: both gradients come from one backward, the generator's taken against the
discriminator before its last update (a simultaneous step).

`--conditional` makes both networks class-conditional (a label embedding beside the
generator's noise, a projection discriminator; see dlu.models.gan). Training batches then
carry `label`, and the fakes of each D or G update take the labels of the real rows they
are scored beside, so every update sees the data's class balance. Evaluation and
sample-quality metrics draw class-balanced labels, and an extra image grid,
`samples_by_class`, shows one row per class.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from absl import flags

from dlu.config import require_fraction, require_non_negative, require_positive
from dlu.config.model_flags import int_list
from dlu.errors import UsageError
from dlu.families.base import Family, TrainState, register
from dlu.models import gan as gan_models
from dlu.ops import gan_losses
from dlu.ops.grids import as_grid
from dlu.runtime import optim

flags.DEFINE_enum(
  "gan_loss",
  "ns",
  list(gan_losses.LOSS_TYPES),
  "ns: non-saturating; hinge; wgan_gp: Wasserstein with gradient penalty.",
)
flags.DEFINE_float("gp_weight", 10.0, "wgan_gp: weight (lambda) of the gradient penalty.")
flags.DEFINE_float(
  "r1_weight",
  0.0,
  "R1 penalty gamma/2 * E||grad_x D(x)||^2 on real images with gamma = this; 0 turns it off.",
)
flags.DEFINE_integer(
  "d_steps", 1, "Discriminator updates per generator update (each on its own slice of the batch)."
)
flags.DEFINE_float(
  "ema_decay",
  0.999,
  "Decay of the generator's weight average used for "
  "evaluation and samples (warmed up as min(decay, (1+t)/(10+t))); 0: off.",
)
flags.DEFINE_float("g_learning_rate", None, "Generator learning rate (default --learning_rate).")
flags.DEFINE_float(
  "d_learning_rate", None, "Discriminator learning rate (default --learning_rate)."
)
flags.DEFINE_float(
  "gan_b1", 0.5, "Adam beta1 of both GAN networks (--b1 is for single-network families)."
)
flags.DEFINE_integer(
  "gan_channels",
  64,
  "dcgan: channels c of the first discriminator and last "
  "hidden generator layer (2c in the middle).",
)
flags.DEFINE_list(
  "gan_widths",
  ["256", "512"],
  "mlp_gan: generator hidden widths (the discriminator uses them reversed).",
)
flags.DEFINE_boolean(
  "conditional",
  False,
  "Class-conditional GAN (dcgan, mlp_gan): the generator "
  "takes a label, the discriminator is a projection discriminator; needs labels.",
)


def _draw(
  sample: Callable, rng: jax.Array, shape: tuple[int, ...], axis_name: str | None
) -> jax.Array:
  """Noise for the global batch, of which this device keeps its rows under pmap.

  So pmap and jit draw the same numbers: the step is the same program either way.
  """
  if axis_name is None:
    return sample(rng, shape)
  n = jax.lax.axis_size(axis_name)
  full = sample(rng, (n * shape[0],) + shape[1:])
  return jax.lax.dynamic_slice_in_dim(full, jax.lax.axis_index(axis_name) * shape[0], shape[0])


#: Columns (noise vectors, the same in every row) of the `samples_by_class` grid.
BY_CLASS_COLUMNS = 8


@register
class GAN(Family):
  models = ("dcgan", "mlp_gan")
  progress_keys = ("d_loss", "g_loss", "d_real", "d_fake")

  @classmethod
  def validate(cls, cfg):
    if cfg.gan_loss not in gan_losses.LOSS_TYPES:
      raise UsageError(
        f"--gan_loss must be one of {', '.join(gan_losses.LOSS_TYPES)}; got {cfg.gan_loss!r}"
      )
    require_positive(cfg, "latent_dim", "d_steps", "gan_channels")
    if cfg.model == "mlp_gan":
      int_list(cfg.gan_widths, "gan_widths")
    require_fraction(cfg, "ema_decay", "gan_b1")
    require_non_negative(cfg, "gp_weight", "r1_weight")
    for name in ("g_learning_rate", "d_learning_rate"):
      if getattr(cfg, name) is not None and not getattr(cfg, name) > 0:
        raise UsageError(
          f"--{name} must be > 0 (or unset for --learning_rate), got {getattr(cfg, name)!r}"
        )
    if cfg.optimizer == "gd":
      raise UsageError("--optimizer=gd (full-batch) does not apply to GANs; use adam, sgd, ...")
    if not isinstance(cfg.conditional, bool):
      raise UsageError(f"--conditional must be true or false, got {cfg.conditional!r}")
    n = jax.device_count()
    if cfg.batch_size % (cfg.d_steps * n):
      raise UsageError(
        f"--batch_size={cfg.batch_size} must be divisible by --d_steps={cfg.d_steps} "
        f"times the device count ({n}): each D step takes a slice on every device"
      )

  def __init__(self, cfg, spec):
    super().__init__(cfg, spec)
    if cfg.model == "dcgan":
      spec.require_images(cfg.model, instead="mlp_gan")
    if cfg.model == "dcgan" and not gan_models.dcgan_compatible(spec.example_shape):
      h, w, _ = spec.example_shape
      raise UsageError(
        f"--model=dcgan needs image height and width divisible by 4; "
        f"the data has {h}x{w} (use --model=mlp_gan)"
      )
    if cfg.conditional and not spec.num_classes:
      raise UsageError(
        "--conditional needs a labelled dataset; this one has no labels "
        "(train an unconditional GAN: drop --conditional)"
      )
    #: classes the networks are conditioned on; None: unconditional.
    self.num_classes = spec.num_classes if cfg.conditional else None
    self.needs_label = self.num_classes is not None
    # Pixels in the data's range; vectors (scaled features) unbounded.
    if not spec.is_image:
      self.output_activation = "linear"
    else:
      self.output_activation = "tanh" if spec.pixel_range == "symmetric" else "sigmoid"
    if cfg.model == "dcgan":
      self.discriminator = gan_models.DCGANDiscriminator(
        cfg.gan_channels, self.num_classes, self.kernel_init, self.compute_dtype
      )
    else:
      self.discriminator = gan_models.MLPDiscriminator(
        tuple(reversed(int_list(cfg.gan_widths, "gan_widths"))),
        self.num_classes,
        self.kernel_init,
        self.compute_dtype,
      )
    b1 = cfg.gan_b1
    self.g_tx = optim.make_optimizer(
      cfg, learning_rate=cfg.g_learning_rate or cfg.learning_rate, b1=b1
    )
    # The D optimizer counts d_steps updates per step: stretch its schedule to match.
    d_cfg = cfg.replace(
      num_steps=cfg.num_steps * cfg.d_steps, warmup_steps=cfg.warmup_steps * cfg.d_steps
    )
    self.d_tx = optim.make_optimizer(
      d_cfg, learning_rate=cfg.d_learning_rate or cfg.learning_rate, b1=b1
    )

  # --- Networks.

  def generator(self, axis_name: str | None = None):
    cfg, shape = self.cfg, self.spec.example_shape
    if cfg.model == "dcgan":
      return gan_models.DCGANGenerator(
        shape,
        cfg.gan_channels,
        self.output_activation,
        axis_name,
        self.num_classes,
        kernel_init=self.kernel_init,
        dtype=self.compute_dtype,
      )
    return gan_models.MLPGenerator(
      shape,
      int_list(cfg.gan_widths, "gan_widths"),
      self.output_activation,
      axis_name,
      self.num_classes,
      kernel_init=self.kernel_init,
      dtype=self.compute_dtype,
    )

  def critic(self, d_params, labels: jax.Array | None = None) -> Callable[[jax.Array], jax.Array]:
    """x -> [B] logits; a conditional critic scores each image against its row of `labels`."""
    return lambda x: self.discriminator.apply({"params": d_params}, x, labels)

  def sample(self, state: TrainState, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Images from the averaged generator with running BatchNorm statistics. [B, H, W, C]

    A conditional generator needs `labels` [B], the class of each image.
    """
    variables = {"params": state.extra["ema"], "batch_stats": state.extra["batch_stats"]}
    return self.generator().apply(variables, z, labels, train=False)

  def balanced_labels(self, n: int, start: jax.Array | int = 0) -> jax.Array | None:
    """Classes start, start + 1, ... modulo the class count: each class equally often. [n]"""
    if self.num_classes is None:
      return None
    return (start + jnp.arange(n, dtype=jnp.int32)) % self.num_classes

  def score(self, state, images):
    """Anomaly score: minus the discriminator's logit (it scores real data high). [B]
    A conditional discriminator scores each input against every class and keeps the best."""
    x = self.normalize(images)
    d = state.params["discriminator"]
    if self.num_classes is None:
      return -self.critic(d)(x)
    classes = jnp.arange(self.num_classes, dtype=jnp.int32)
    logits = jax.vmap(lambda y: self.critic(d, jnp.full((x.shape[0],), y))(x))(classes)
    return -jnp.max(logits, axis=0)

  def to_unit(self, x: jax.Array) -> jax.Array:
    return (x + 1.0) / 2.0 if self.output_activation == "tanh" else x

  def init_state(self, rng):
    g_rng, d_rng = jax.random.split(rng)
    labels = self.balanced_labels(1)
    g_vars = self.generator().init(g_rng, jnp.zeros((1, self.cfg.latent_dim)), labels, train=False)
    d_params = self.discriminator.init(d_rng, jnp.zeros((1,) + self.spec.example_shape), labels)[
      "params"
    ]
    params = {"generator": g_vars["params"], "discriminator": d_params}
    opt_state = {
      "generator": self.g_tx.init(g_vars["params"]),
      "discriminator": self.d_tx.init(d_params),
    }
    extra = {"batch_stats": g_vars["batch_stats"], "ema": g_vars["params"]}
    return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, extra=extra
    )

  # --- The step.

  def d_objective(self, d_params, real, fake, rng, axis_name, labels=None):
    """The discriminator's loss with its penalties, and what to log of it.

    A conditional critic scores real and fake row i against class labels[i].
    """
    cfg = self.cfg
    critic = self.critic(d_params, labels)
    real_logit, fake_logit = critic(real), critic(fake)  # [B], [B]
    d_loss = gan_losses.discriminator_loss(
      real_logit=real_logit, fake_logit=fake_logit, loss_type=cfg.gan_loss
    )
    total, penalty = d_loss, jnp.zeros((), d_loss.dtype)
    if cfg.gan_loss == "wgan_gp":
      weights = _draw(jax.random.uniform, rng, (real.shape[0],), axis_name)
      penalty = gan_losses.gradient_penalty(critic, real=real, fake=fake, weights=weights)
      total = total + cfg.gp_weight * penalty
    metrics = {
      "d_loss": d_loss,
      "d_real": jnp.mean(real_logit),
      "d_fake": jnp.mean(fake_logit),
      "grad_penalty": penalty,
    }
    if cfg.r1_weight > 0:
      metrics["r1_penalty"] = gan_losses.r1_penalty(critic, real)
      total = total + cfg.r1_weight / 2 * metrics["r1_penalty"]
    return total, metrics

  def train_step(self, state, batch, rng, *, axis_name=None):
    cfg = self.cfg
    rng = jax.random.fold_in(rng, state.step)
    real = self.normalize(batch["image"])  # [B, H, W, C]; this device's rows under pmap
    d = cfg.d_steps
    b = real.shape[0] // d
    slices = jnp.swapaxes(real.reshape((b, d) + real.shape[1:]), 0, 1)  # [d, B/d, H, W, C]
    # The real rows' classes, sliced alike: each slice's fakes take its labels. [d, B/d]
    labels = batch["label"].reshape((b, d)).T if self.needs_label else None
    gen = self.generator(axis_name)
    g_params, d_params = state.params["generator"], state.params["discriminator"]
    g_opt, d_opt = state.opt_state["generator"], state.opt_state["discriminator"]
    stats = state.extra["batch_stats"]
    mean = (lambda t: jax.lax.pmean(t, axis_name)) if axis_name else (lambda t: t)

    def generate(g_params, key, labels_k):
      z = _draw(jax.random.normal, key, (b, cfg.latent_dim), axis_name)
      fake, updates = gen.apply(
        {"params": g_params, "batch_stats": stats}, z, labels_k, train=True, mutable=["batch_stats"]
      )
      return fake, updates["batch_stats"]

    def d_update(carry, xs):
      d_params, d_opt = carry
      real_k, labels_k, k = xs
      z_key, gp_key = jax.random.split(jax.random.fold_in(rng, k))
      fake = jax.lax.stop_gradient(generate(g_params, z_key, labels_k)[0])
      grads = jax.grad(lambda p: self.d_objective(p, real_k, fake, gp_key, axis_name, labels_k)[0])(
        d_params
      )
      updates, d_opt = self.d_tx.update(mean(grads), d_opt, d_params)
      return (optax.apply_updates(d_params, updates), d_opt), None

    last_labels = None if labels is None else labels[-1]
    if d > 1:
      (d_params, d_opt), _ = jax.lax.scan(
        d_update,
        (d_params, d_opt),
        (slices[:-1], None if labels is None else labels[:-1], jnp.arange(d - 1)),
      )

    def joint(g_params, d_params):
      # One generator forward; D's loss sees the fakes as constants, G's loss sees D as one,
      # so the gradient of the sum is each network's own (XLA shares the identical forwards).
      z_key, gp_key = jax.random.split(jax.random.fold_in(rng, d - 1))
      fake, new_stats = generate(g_params, z_key, last_labels)
      d_total, metrics = self.d_objective(
        d_params, slices[-1], jax.lax.stop_gradient(fake), gp_key, axis_name, last_labels
      )
      g_loss = gan_losses.generator_loss(
        fake_logit=self.critic(jax.lax.stop_gradient(d_params), last_labels)(fake),
        loss_type=cfg.gan_loss,
      )
      return d_total + g_loss, ({**metrics, "g_loss": g_loss}, new_stats)

    (g_grads, d_grads), (metrics, new_stats) = jax.grad(joint, argnums=(0, 1), has_aux=True)(
      g_params, d_params
    )
    g_grads, d_grads, metrics = mean((g_grads, d_grads, metrics))
    d_updates, d_opt = self.d_tx.update(d_grads, d_opt, d_params)
    d_params = optax.apply_updates(d_params, d_updates)
    g_updates, g_opt = self.g_tx.update(g_grads, g_opt, g_params)
    g_params = optax.apply_updates(g_params, g_updates)

    step = state.step.astype(jnp.float32)
    decay = jnp.minimum(cfg.ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.extra["ema"], g_params)
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
      extra={"batch_stats": new_stats, "ema": ema},
    ), metrics

  # --- Evaluation.

  def eval_metrics(self, state, batch, rng):
    real = self.normalize(batch["image"])
    z = jax.random.normal(rng, (real.shape[0], self.cfg.latent_dim))
    labels = batch["label"] if self.needs_label else None  # fakes of the test rows' classes
    critic = self.critic(state.params["discriminator"], labels)
    return {"d_real_test": critic(real), "d_fake_test": critic(self.sample(state, z, labels))}

  def images(self, state, batch, rng):
    n = batch["image"].shape[0]
    z = jax.random.normal(rng, (n, self.cfg.latent_dim))  # the eval key: the same noise each eval
    x = jnp.clip(self.to_unit(self.sample(state, z, self.balanced_labels(n))), 0.0, 1.0)
    grids = {"samples": as_grid(x)}
    if self.needs_label:  # Row y: class y; column j: the same noise in every row.
      k, cols = self.num_classes, BY_CLASS_COLUMNS
      z = jnp.tile(
        jax.random.normal(jax.random.fold_in(rng, 1), (cols, self.cfg.latent_dim)), (k, 1)
      )
      x = self.sample(state, z, jnp.repeat(jnp.arange(k, dtype=jnp.int32), cols))
      x = jnp.clip(self.to_unit(x), 0.0, 1.0)
      grids["samples_by_class"] = x.reshape((k, cols) + x.shape[1:])
    return grids

  def embed(self, state, images):
    """Discriminator penultimate features. [B, D]"""
    return self.discriminator.apply(
      {"params": state.params["discriminator"]}, self.normalize(images), method="embed"
    )

  # --- Samples for the sample_quality evaluator.

  def sample_noise(self, rng: jax.Array, start: jax.Array | int, n: int):
    """The generator's inputs for n samples: noise [n, latent_dim] and, when conditional,
    class-balanced labels starting at class `start` [n] (None otherwise)."""
    return jax.random.normal(rng, (n, self.cfg.latent_dim)), self.balanced_labels(n, start)

  def samples_from_noise(self, state: TrainState, noise) -> jax.Array:
    """Images in [0, 1] of the averaged generator from `sample_noise`'s output. [n, H, W, C]"""
    return jnp.clip(self.to_unit(self.sample(state, *noise)), 0, 1)
