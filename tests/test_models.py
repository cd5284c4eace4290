"""Autoencoder modules: shapes, standalone encode/decode, the seed architecture exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlu import config, families
from dlu.families import DataSpec
from dlu.models import autoencoder as ae


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (32, 32, 3)])
def test_mlp_autoencoder_shapes(shape):
  model = ae.MLPAutoencoder(shape, encoder_widths=(64, 32), latent_dim=8)
  x = jnp.ones((5,) + shape)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (5,) + shape
  z = model.apply(variables, x, method="encode")
  assert z.shape == (5, 8)
  assert model.apply(variables, z, method="decode").shape == (5,) + shape


def test_seed_autoencoder_is_one_relu_layer_and_a_linear_output():
  model = ae.MLPAutoencoder(
    (28, 28, 1), encoder_widths=(), latent_dim=128, latent_activation="relu"
  )
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  params = model.init(jax.random.key(0), x)["params"]
  kernels = [p.shape for p in jax.tree.leaves(params)]
  assert sorted(kernels) == sorted([(784, 128), (128,), (128, 784), (784,)])
  enc, dec = params["encoder"]["dense_0"], params["decoder"]["dense_0"]
  flat = x.reshape(3, -1)
  expected = jax.nn.relu(flat @ enc["kernel"] + enc["bias"]) @ dec["kernel"] + dec["bias"]
  out = model.apply({"params": params}, x)
  assert jnp.allclose(out.reshape(3, -1), expected, atol=1e-5)
  # The code is non-negative (relu) and the output can be negative (linear).
  assert (model.apply({"params": params}, x, method="encode") >= 0).all()


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (32, 32, 3)])
def test_conv_autoencoder_shapes(shape):
  model = ae.ConvAutoencoder(shape, channels=(8, 16), latent_dim=4)
  x = jnp.ones((2,) + shape)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only: no compilation
  assert jax.eval_shape(model.apply, variables, x).shape == (2,) + shape
  assert jax.eval_shape(lambda v, x: model.apply(v, x, method="encode"), variables, x).shape == (
    2,
    4,
  )


def test_conv_compatible():
  assert ae.conv_compatible((28, 28, 1), 2)
  assert not ae.conv_compatible((28, 28, 1), 3)


@pytest.mark.parametrize(
  "make",
  [
    lambda rate: ae.MLPAutoencoder((8, 8, 1), encoder_widths=(16,), latent_dim=4, dropout=rate),
    lambda rate: ae.ConvAutoencoder((8, 8, 1), channels=(4, 8), latent_dim=4, dropout=rate),
  ],
)
@pytest.mark.slow
def test_dropout_only_in_training_and_same_parameters(make):
  x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
  plain, dropped = make(0.0), make(0.5)

  @jax.jit  # one compilation
  def outputs(key):
    params = plain.init(jax.random.key(1), x)
    train = dropped.apply(params, x, rngs={"dropout": key})
    return plain.apply(params, x), dropped.apply(params, x), train, params

  out, evaluated, train, params = outputs(jax.random.key(2))
  assert jax.tree.structure(params) == jax.tree.structure(
    jax.eval_shape(dropped.init, jax.random.key(1), x)
  )
  # Without a dropout rng (evaluation) the model is the plain one; with one, units drop.
  assert jnp.array_equal(evaluated, out)
  assert not jnp.allclose(train, out) and not jnp.allclose(train, outputs(jax.random.key(3))[2])


def test_kernel_init_changes_values_not_parameters():
  seed = lambda init: ae.MLPAutoencoder(
    (28, 28, 1), latent_dim=128, latent_activation="relu", kernel_init=init
  )
  x = jnp.zeros((1, 28, 28, 1))
  glorot, he = jax.jit(
    lambda key: [seed(init).init(key, x)["params"] for init in ("glorot_uniform", "he_normal")]
  )(jax.random.key(0))
  assert seed("glorot_uniform") == ae.MLPAutoencoder(
    (28, 28, 1), latent_dim=128, latent_activation="relu"
  )  # the default
  assert jax.tree.map(jnp.shape, glorot) == jax.tree.map(jnp.shape, he)  # checkpoints still load
  out_glorot, out_he = (np.var(p["decoder"]["dense_0"]["kernel"]) for p in (glorot, he))
  np.testing.assert_allclose(out_glorot, 2 / (128 + 784), rtol=0.04)
  np.testing.assert_allclose(out_he, 2 / 128, rtol=0.04)
  assert not np.any(glorot["decoder"]["dense_0"]["bias"])  # biases still start at zero


@pytest.mark.parametrize(
  "model", ["ae_seed", "ae_mlp", "ae_conv", "vae", "conv_vae", "simclr_mlp", "simclr_conv"]
)
def test_every_family_builds_its_model_with_kernel_init(model):
  cfg = config.make_config(model=model, kernel_init="he_uniform")
  family = families.get(model)(cfg, DataSpec((8, 8, 1), 10, 64))
  assert family.make_model().kernel_init == "he_uniform"


def test_kernel_init_auto_is_the_measured_choice_of_each_model():
  for model, expected in (
    ("ae_seed", "glorot_uniform"),
    ("ae_mlp", "lecun_normal"),
    ("ae_conv", "lecun_normal"),
    ("conv_vae", "glorot_uniform"),
  ):
    family = families.get(model)(config.make_config(model=model), DataSpec((8, 8, 1), 10, 64))
    assert family.kernel_init == family.make_model().kernel_init == expected


@pytest.mark.parametrize("model", ["dcgan", "mlp_gan"])
def test_gan_networks_get_kernel_init(model):
  cfg = config.make_config(model=model, pixel_range="symmetric", kernel_init="dcgan_normal")
  family = families.get(model)(cfg, DataSpec((8, 8, 1), 10, 64, "symmetric"))
  assert family.generator().kernel_init == family.discriminator.kernel_init == "dcgan_normal"
