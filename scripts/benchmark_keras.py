"""The benchmark's models in Keras 3 on TensorFlow, trained with `fit` as Keras users do.

Imported only by `scripts/benchmark.py --worker=keras`; dlu never imports it. The VAE and
the GAN override `train_step`, as in the Keras examples; ae_conv1d is a functional model of the
series and its mask with a masked-MSE loss (no text_ae here). Step times are taken between
batch-end callbacks, so `fit`'s per-call set-up is not counted against Keras.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402


def version() -> str:
  return f"keras {keras.__version__}, tensorflow {tf.__version__}"


def _encoder(out_dim, shape=(28, 28, 1)):
  return keras.Sequential(
    [
      keras.Input(shape),
      layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
      layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
      layers.Flatten(),
      layers.Dense(out_dim),
    ]
  )


def _decoder(in_dim, shape=(28, 28, 1)):
  h4, w4 = shape[0] // 4, shape[1] // 4
  return keras.Sequential(
    [
      keras.Input((in_dim,)),
      layers.Dense(h4 * w4 * 64, activation="relu"),
      layers.Reshape((h4, w4, 64)),
      layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu"),
      layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
      layers.Conv2DTranspose(1, 3, strides=1, padding="same"),
    ]
  )


def _conv1d_ae(latent_dim, shape):
  """dlu's ae_conv1d: the series and its mask side by side on the channels, stride-2 Conv1D
  32/64 (kernel 5), a dense code, dense back to T/4 steps, stride-2 Conv1DTranspose 64/32 and a
  stride-1 output Conv1D, cropped to T."""
  length, channels = shape
  t0 = -(-length // 4)
  x, mask = keras.Input(shape), keras.Input(shape)
  h = layers.Concatenate()([x, mask])
  for width in (32, 64):
    h = layers.Conv1D(width, 5, strides=2, padding="same", activation="relu")(h)
  code = layers.Dense(latent_dim)(layers.Flatten()(h))
  h = layers.Reshape((t0, 64))(layers.Dense(t0 * 64, activation="relu")(code))
  for width in (64, 32):
    h = layers.Conv1DTranspose(width, 5, strides=2, padding="same", activation="relu")(h)
  out = layers.Cropping1D((0, 4 * t0 - length))(layers.Conv1D(channels, 5, padding="same")(h))
  return keras.Model([x, mask], out)


def masked_mse(y_true, y_pred):
  """MSE over each series' observed values (NaN in `y_true`: missing). [B]"""
  mask = keras.ops.isfinite(y_true)
  err = keras.ops.where(mask, y_pred - keras.ops.where(mask, y_true, 0.0), 0.0)
  count = keras.ops.sum(keras.ops.cast(mask, "float32"), axis=(1, 2))
  return keras.ops.sum(err**2, axis=(1, 2)) / keras.ops.maximum(count, 1.0)


def split_nan(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(series with NaN steps 0, mask 1.0 where observed)."""
  mask = np.isfinite(x)
  return np.where(mask, x, 0.0).astype(np.float32), mask.astype(np.float32)


class VAE(keras.Model):
  """Conv VAE, dynamically binarised Bernoulli likelihood, one posterior sample."""

  def __init__(self, latent_dim, shape=(28, 28, 1)):
    super().__init__()
    self.latent_dim = latent_dim
    self.encoder, self.decoder = _encoder(2 * latent_dim, shape), _decoder(latent_dim, shape)

  def train_step(self, x):
    x = tf.cast(tf.random.uniform(tf.shape(x)) < x, tf.float32)
    with tf.GradientTape() as tape:
      h = self.encoder(x, training=True)
      mean, log_var = h[:, : self.latent_dim], h[:, self.latent_dim :]
      z = mean + tf.exp(0.5 * log_var) * tf.random.normal(tf.shape(mean))
      logits = self.decoder(z, training=True)
      nll = tf.reduce_sum(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), [1, 2, 3]
      )
      kl = 0.5 * tf.reduce_sum(mean**2 + tf.exp(log_var) - 1 - log_var, 1)
      loss = tf.reduce_mean(nll + kl)
    grads = tape.gradient(loss, self.trainable_weights)
    self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
    return {"loss": loss}


class DCGAN(keras.Model):
  """One discriminator then one generator update per batch, non-saturating loss."""

  def __init__(self, latent_dim, shape=(28, 28, 1)):
    super().__init__()
    self.latent_dim = latent_dim
    h4, w4 = shape[0] // 4, shape[1] // 4
    self.generator = keras.Sequential(
      [
        keras.Input((latent_dim,)),
        layers.Dense(h4 * w4 * 128, use_bias=False),
        layers.Reshape((h4, w4, 128)),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.Conv2DTranspose(64, 4, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="tanh"),
      ]
    )
    self.discriminator = keras.Sequential(
      [
        keras.Input(shape),
        layers.Conv2D(64, 4, strides=2, padding="same"),
        layers.LeakyReLU(0.2),
        layers.Conv2D(128, 4, strides=2, padding="same"),
        layers.LeakyReLU(0.2),
        layers.Flatten(),
        layers.Dense(1),
      ]
    )
    self.bce = keras.losses.BinaryCrossentropy(from_logits=True)

  def compile(self, d_optimizer, g_optimizer, **kwargs):
    super().compile(**kwargs)
    self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

  def train_step(self, real):
    real = real * 2 - 1
    b = tf.shape(real)[0]
    z = tf.random.normal((b, self.latent_dim))
    with tf.GradientTape() as tape:
      fake = self.generator(z, training=True)
      d_loss = self.bce(tf.ones((b, 1)), self.discriminator(real, training=True)) + self.bce(
        tf.zeros((b, 1)), self.discriminator(fake, training=True)
      )
    grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
    self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
    with tf.GradientTape() as tape:
      fake = self.generator(z, training=True)
      g_loss = self.bce(tf.ones((b, 1)), self.discriminator(fake, training=True))
    grads = tape.gradient(g_loss, self.generator.trainable_weights)
    self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
    return {"d_loss": d_loss, "g_loss": g_loss}


def build(
  model: str, latent_dim: int, shape=(28, 28, 1), seed: int = 0, **compile_kwargs
) -> keras.Model:
  """The model, compiled with `compile_kwargs` (jit_compile, steps_per_execution) added."""
  keras.utils.set_random_seed(seed)
  d = int(np.prod(shape))
  if model == "ae_seed":
    net = keras.Sequential(
      [
        keras.Input(shape),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(d),
        layers.Reshape(shape),
      ]
    )
    net.compile(keras.optimizers.Adam(1e-3), loss="mse", **compile_kwargs)
  elif model == "ae_mlp":
    widths = [512, 256, 32, 256, 512]
    net = keras.Sequential(
      [keras.Input(shape), layers.Flatten()]
      + [layers.Dense(w, activation=None if w == 32 else "relu") for w in widths]
      + [layers.Dense(d), layers.Reshape(shape)]
    )
    net.compile(
      keras.optimizers.Adam(1e-3),
      loss=keras.losses.BinaryCrossentropy(from_logits=True),
      **compile_kwargs,
    )
  elif model == "ae_conv":
    net = keras.Sequential([_encoder(latent_dim, shape), _decoder(latent_dim, shape)])
    net.compile(
      keras.optimizers.Adam(1e-3),
      loss=keras.losses.BinaryCrossentropy(from_logits=True),
      **compile_kwargs,
    )
  elif model == "ae_conv1d":
    net = _conv1d_ae(latent_dim, shape)
    net.compile(keras.optimizers.Adam(1e-3), loss=masked_mse, **compile_kwargs)
  elif model == "conv_vae":
    net = VAE(latent_dim, shape)
    net.compile(keras.optimizers.Adam(1e-3), **compile_kwargs)
  elif model == "dcgan":
    net = DCGAN(latent_dim, shape)
    net.compile(
      keras.optimizers.Adam(2e-4, beta_1=0.5),
      keras.optimizers.Adam(2e-4, beta_1=0.5),
      **compile_kwargs,
    )
  else:
    raise KeyError(model)
  return net


class _StepTimes(keras.callbacks.Callback):
  """The time at the end of each execution (of `steps_per_execution` steps)."""

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter())


def outputs(net: keras.Model, model: str, inputs: dict, n_samples: int, batch: int = 1000) -> dict:
  """What the benchmark scores (see `benchmark.py`), the networks in inference mode."""
  run = lambda f, x: np.concatenate(
    [np.asarray(f(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
  )
  if model == "dcgan":
    z = np.random.normal(size=(n_samples, net.latent_dim)).astype(np.float32)
    return {"samples": (run(net.generator, z) + 1) / 2}
  if model == "ae_conv1d":
    x0, mask = split_nan(inputs["x_test"])
    parts = [
      np.asarray(net([x0[i : i + batch], mask[i : i + batch]], training=False))
      for i in range(0, len(x0), batch)
    ]
    return {"output": np.concatenate(parts)}
  if model == "conv_vae":
    h = run(net.encoder, inputs["binary"])
    mean, log_var = h[:, : net.latent_dim], h[:, net.latent_dim :]
    z = (mean + np.exp(0.5 * log_var) * inputs["eps"]).astype(np.float32)
    return {"mean": mean, "log_var": log_var, "logits": run(net.decoder, z)}
  return {"output": run(net, inputs["images"].astype(np.float32) / 255.0)}


class _Evaluations(keras.callbacks.Callback):
  """At the end of each batch in `eval_at`: report the training time so far (without the
  time the reports took) and the outputs."""

  def __init__(self, name, eval_at, inputs, n_samples, report, steps_per_execution=1):
    super().__init__()
    self.k, self.done = steps_per_execution, 0  # Callbacks run once per execution.
    self.name, self.eval_at, self.inputs, self.n, self.report = (
      name,
      set(eval_at),
      inputs,
      n_samples,
      report,
    )

  def on_train_begin(self, logs=None):
    self.start, self.paused = time.perf_counter(), 0.0

  def on_train_batch_end(self, batch, logs=None):
    self.done += self.k
    if self.done in self.eval_at:
      t = time.perf_counter()
      out = outputs(self.model, self.name, self.inputs, self.n)
      self.report(self.done, t - self.start - self.paused, out)
      self.paused += time.perf_counter() - t


class Runner:
  """The worker protocol: set up a model (timing its first step), then run timed steps."""

  def __init__(
    self,
    x: np.ndarray,
    batch_size: int,
    jit_compile: bool = False,
    mlp_steps_per_execution: int = 1,
  ):
    """Keras's defaults, or its fast settings: `jit_compile=True` and, for the MLPs,
    `steps_per_execution` steps in one call (the conv models' steps are long enough)."""
    self.x = None if x is None else x.astype(np.float32) / 255.0  # [N, 28, 28, 1]
    self.batch_size, self.nets, self.series = batch_size, {}, {}  # series: ae_conv1d's data
    self.jit_compile, self.mlp_k = jit_compile, mlp_steps_per_execution

  def steps_per_dispatch(self, model: str) -> int:
    return self.mlp_k if model in ("ae_seed", "ae_mlp") else 1

  def _build(self, model: str, latent_dim: int, seed: int = 0) -> keras.Model:
    kwargs = {"steps_per_execution": self.steps_per_dispatch(model)}
    if self.jit_compile:
      kwargs["jit_compile"] = True
    shape = self.series[model].shape[1:] if model in self.series else self.x.shape[1:]
    return build(model, latent_dim, shape, seed, **kwargs)

  def _fit(self, model: str, steps: int, net=None, callback=None) -> list[float]:
    net, timer = net or self.nets[model], _StepTimes()
    timer.times = [time.perf_counter()]
    target = None if model in ("conv_vae", "dcgan") else self.x
    # A tf.data pipeline of the in-memory array, shuffled each epoch, as in the Keras guides.
    if model in self.series:  # inputs (series with missing steps 0, mask), target with NaN
      x = self.series[model]
      ds = tf.data.Dataset.from_tensor_slices((split_nan(x), x))
    else:
      x = self.x
      ds = tf.data.Dataset.from_tensor_slices(x if target is None else (x, target))
    ds = ds.shuffle(len(x)).repeat().batch(self.batch_size, drop_remainder=True)
    net.fit(
      ds.prefetch(tf.data.AUTOTUNE),
      epochs=1,
      steps_per_epoch=steps,
      verbose=0,
      callbacks=[timer] + ([callback] if callback else []),
    )
    return timer.times

  def setup(self, model: str, latent_dim: int, x_train=None) -> tuple[float, float]:
    """(seconds of the first step, tracing included; seconds per step after it). `x_train`:
    ae_conv1d's series."""
    if x_train is not None:
      self.series[model] = x_train
    self.nets[model] = self._build(model, latent_dim)
    k = self.steps_per_dispatch(model)
    times = self._fit(model, 3 * k)  # three executions
    return times[1] - times[0], (times[3] - times[1]) / (2 * k)

  def run(self, model: str, steps: int) -> float:
    """Seconds of `steps` steps (a multiple of the steps per execution), from the end of the
    first execution."""
    times = self._fit(model, steps + self.steps_per_dispatch(model))
    return times[-1] - times[1]

  def train(self, model, latent_dim, seed, steps, eval_at, inputs, n_samples, report):
    """Train a fresh model with one `fit` of `steps` steps; at each step in `eval_at`,
    `report(step, training seconds so far, outputs)` (the time it takes is not counted)."""
    if "x_train" in inputs:
      self.series[model] = inputs["x_train"]
    net, k = self._build(model, latent_dim, seed), self.steps_per_dispatch(model)
    self._fit(model, steps, net, _Evaluations(model, eval_at, inputs, n_samples, report, k))
