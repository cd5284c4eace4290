"""A small classifier whose penultimate features stand in for Inception's in FID, KID, P/R.

No Inception weights can be had offline, so each labelled dataset gets its own feature
network: trained once on the train split (fixed seed and recipe), its test accuracy
measured, and its parameters cached beside the data as
`<data_dir>/dlu_feature_net/<dataset>-<hash>.msgpack`, the hash covering the recipe and
the data. Every run on that dataset then scores samples with the same features.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from dlu import data, files
from dlu.models.layers import Conv, conv_kernel_init

# The training recipe; changing any of it changes the cache key.
RECIPE = {
  "version": 1,
  "channels": (32, 64),
  "width": 128,
  "batch_size": 128,
  "epochs": 3,
  "min_steps": 300,
  "learning_rate": 1e-3,
  "seed": 0,
}
CACHE_FOLDER = "dlu_feature_net"


class Classifier(nn.Module):
  """Conv(32, s2), relu -> Conv(64, s2), relu -> Dense(128), relu [features] -> logits."""

  num_classes: int
  channels: tuple[int, ...] = RECIPE["channels"]
  width: int = RECIPE["width"]

  def setup(self):
    self.convs = [
      Conv(
        c, (3, 3), strides=(2, 2), padding="SAME", kernel_init=conv_kernel_init, name=f"conv_{i}"
      )
      for i, c in enumerate(self.channels)
    ]
    self.hidden = nn.Dense(self.width)
    self.out = nn.Dense(self.num_classes)

  def features(self, x: jax.Array) -> jax.Array:
    """Penultimate activations of images in [0, 1]. [B, width]"""
    for conv in self.convs:
      x = nn.relu(conv(x))
    return nn.relu(self.hidden(x.reshape((x.shape[0], -1))))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(self.features(x))  # [B, num_classes]


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A trained classifier: `features(params, images in [0, 1]) -> [B, width]` is pure."""

  model: Classifier
  params: Any
  test_accuracy: float
  path: str

  def features(self, params: Any, images: jax.Array) -> jax.Array:
    return self.model.apply({"params": params}, images, method="features")


def cache_path(dataset: data.Dataset, cache_dir: str) -> str:
  """Where the feature network of `dataset` is kept; the name changes with data or recipe."""
  h = hashlib.sha256(repr(sorted(RECIPE.items())).encode())
  for part in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
    h.update(repr((part.shape, part.dtype.str)).encode())
    h.update(np.ascontiguousarray(part).data)
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.name).strip("_") or "dataset"
  return os.path.join(cache_dir, CACHE_FOLDER, f"{safe}-{h.hexdigest()[:16]}.msgpack")


@functools.lru_cache(maxsize=8)
def _update_fn(model: Classifier, num_steps: int, learning_rate: float, weighted: bool = False):
  """The optimizer and a jitted Adam step on cross-entropy (`weighted`: each example's term
  times its class's weight, `step(..., class_weights)`); cached, so repeated trainings with
  one recipe (experiments.augment, experiments.imbalance) compile once per batch shape."""
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))

  @jax.jit
  def step(params, opt_state, images, labels, class_weights=None):
    def loss_fn(p):
      logits = model.apply({"params": p}, data.normalize(images))
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B]
      if weighted:
        loss = loss * class_weights[labels]
      return loss.mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return tx, step


def train_classifier(
  x: np.ndarray,
  y: np.ndarray,
  num_classes: int,
  *,
  num_steps: int,
  batch_size: int = RECIPE["batch_size"],
  learning_rate: float = RECIPE["learning_rate"],
  seed: int = RECIPE["seed"],
  log: Callable[[str], None] | None = None,
  class_weights: np.ndarray | None = None,
) -> tuple[Classifier, Any]:
  """The feature network's architecture trained on images `x` (as stored) with labels `y`.

  Adam with a cosine decay over `num_steps` minibatches of min(batch_size, len(x)) drawn from
  per-epoch shuffles (numpy generator `seed`; `seed` also initialises the weights), on the
  default device. `class_weights` [num_classes]: weights of each class's cross-entropy terms
  (None: all 1). `log` gets one line per epoch.
  """
  model = Classifier(num_classes)
  batch_size = min(batch_size, len(x))
  steps_per_epoch = len(x) // batch_size
  weighted = class_weights is not None
  tx, step = _update_fn(model, num_steps, learning_rate, weighted)
  extra = (jnp.asarray(class_weights, jnp.float32),) if weighted else ()
  rng = jax.random.key(seed)
  params = model.init(rng, jnp.zeros((1,) + x.shape[1:]))["params"]
  opt_state = tx.init(params)
  order = np.random.default_rng(seed)
  perm = order.permutation(len(x))
  t0, loss = time.perf_counter(), float("nan")
  for i in range(num_steps):
    epoch, j = divmod(i, steps_per_epoch)
    if j == 0 and epoch > 0:
      perm = order.permutation(len(x))
      if log is not None:
        log(f"  epoch {epoch}: loss {float(loss):.4f}, {time.perf_counter() - t0:.0f} s")
    idx = perm[j * batch_size : (j + 1) * batch_size]
    params, opt_state, loss = step(params, opt_state, x[idx], y[idx], *extra)
  return model, params


def _train(dataset: data.Dataset, log: Callable[[str], None]) -> tuple[Classifier, Any]:
  """The recipe: RECIPE["epochs"] epochs (at least RECIPE["min_steps"]) of the train split."""
  batch_size = min(RECIPE["batch_size"], len(dataset.x_train))
  num_steps = max(RECIPE["epochs"] * (len(dataset.x_train) // batch_size), RECIPE["min_steps"])
  return train_classifier(
    dataset.x_train,
    dataset.y_train,
    dataset.num_classes,
    num_steps=num_steps,
    batch_size=batch_size,
    learning_rate=RECIPE["learning_rate"],
    seed=RECIPE["seed"],
    log=log,
  )


@functools.lru_cache(maxsize=8)
def _predict_fn(model: Classifier):
  return jax.jit(lambda p, v: jnp.argmax(model.apply({"params": p}, data.normalize(v)), -1))


def predict(model: Classifier, params: Any, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """The predicted class of each image of `x` (as stored). [N] int"""
  fn = _predict_fn(model)
  out = [
    np.asarray(fn(params, x[start : start + batch_size])) for start in range(0, len(x), batch_size)
  ]
  return np.concatenate(out) if out else np.zeros(0, np.int32)


def accuracy(
  model: Classifier, params: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 1000
) -> float:
  return float(np.mean(predict(model, params, x, batch_size) == y))


def _save(path: str, params: Any, test_accuracy: float) -> None:
  payload = {"params": jax.device_get(params), "test_accuracy": np.float64(test_accuracy)}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with files.atomic_write(path, "wb") as f:  # readers see the old file or the whole new one
      f.write(flax.serialization.msgpack_serialize(payload))
  except OSError as e:  # e.g. a read-only data dir: the network still serves this run
    logging.warning("Could not cache the feature network at %s (%s)", path, e)
    print(f"Feature network not cached ({e}); it will be retrained next time", flush=True)


def load_or_train(
  dataset: data.Dataset, cache_dir: str, log: Callable[[str], None] = print
) -> FeatureNet:
  """The cached feature network of `dataset`, training (and caching) it on first use."""
  if dataset.y_train is None or dataset.y_test is None or not dataset.num_classes:
    raise ValueError(f"{dataset.name} has no labels to train a feature network on")
  path = cache_path(dataset, cache_dir)
  model = Classifier(dataset.num_classes)
  if os.path.isfile(path):
    with open(path, "rb") as f:
      payload = flax.serialization.msgpack_restore(f.read())
    net = FeatureNet(model, payload["params"], float(payload["test_accuracy"]), path)
    log(
      f"Feature network for {dataset.name}: test accuracy {net.test_accuracy:.4f} "
      f"(loaded from {path})"
    )
    return net
  t0 = time.perf_counter()
  log(f"Training the feature network for {dataset.name} (once; cached in {path}) ...")
  model, params = _train(dataset, log)
  acc = accuracy(model, params, dataset.x_test, dataset.y_test)
  _save(path, params, acc)
  log(
    f"Feature network for {dataset.name}: test accuracy {acc:.4f} "
    f"(trained in {time.perf_counter() - t0:.0f} s)"
  )
  return FeatureNet(model, jax.device_get(params), acc, path)
