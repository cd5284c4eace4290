"""dlu's Conv/ConvTranspose compute what flax's compute: parameters, outputs and all gradients;
the kernel initializers have the variances Keras and flax define."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlu.models import autoencoder, fast_conv, layers


def _assert_close(ours, theirs, rtol=2e-5):
  """Within float32 rounding, relative to each array's scale (kernel grads are large sums)."""

  def check(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(1.0, float(np.abs(b).max())))

  jax.tree.map(check, ours, theirs)


def _random_like(tree, seed):
  """NumPy draws: each new shape of jax.random costs a compilation (seconds), these do not."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), tree)


def _outputs_and_grads(module, params, x, probe):
  def loss(params, x):
    y = module.apply({"params": params}, x)
    return jnp.sum(y * probe), y

  (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
  return y, grads


CASES = [  # (layer, kernel, stride, input H x W, batch, in -> out channels)
  ("Conv", 3, 1, (7, 7), 3, (5, 4)),
  ("Conv", 3, 2, (8, 8), 3, (5, 4)),
  ("Conv", 3, 2, (7, 9), 2, (5, 4)),
  ("Conv", 4, 2, (8, 8), 2, (5, 4)),
  ("Conv", 3, 1, (6, 6), 2, (8, 1)),  # few output channels: the narrow GEMM form
  ("ConvTranspose", 3, 1, (6, 6), 3, (5, 4)),
  ("ConvTranspose", 3, 2, (4, 4), 3, (5, 4)),
  ("ConvTranspose", 4, 2, (5, 3), 2, (5, 4)),
  ("ConvTranspose", 5, 2, (4, 4), 2, (5, 4)),
  ("ConvTranspose", 3, 1, (6, 6), 2, (8, 1)),
  ("ConvTranspose", 4, 2, (4, 4), 2, (8, 1)),
]


@pytest.mark.parametrize("layer,k,s,hw,batch,channels", CASES)
def test_matches_flax(layer, k, s, hw, batch, channels, monkeypatch):
  _check_against_flax(layer, k, (s, s), hw, batch, channels, monkeypatch)


@pytest.mark.parametrize(
  "k,s,hw",
  [
    ((3, 3), (2, 2), (4, 4)),
    ((4, 4), (2, 2), (5, 3)),
    ((5, 3), (2, 3), (4, 3)),
    ((3, 3), (3, 3), (3, 4)),
    ((2, 2), (2, 2), (3, 3)),
    ((1, 1), (2, 2), (3, 3)),
  ],
)
def test_transposed_conv_by_output_phases_matches_lax(k, s, hw, monkeypatch):
  monkeypatch.setattr(fast_conv, "PHASE_MIN_COUT", 1)  # every strided case takes the phase form
  by_phase = all(
    fast_conv._phase_offsets(kk, ss, fast_conv.transpose_taps(kk, ss)) for kk, ss in zip(k, s)
  )
  assert by_phase == (k != (1, 1))  # 1x1 stride 2 leaves phases without taps: XLA's op.
  x = _random_like(jax.ShapeDtypeStruct((2,) + hw + (5,), jnp.float32), 0)
  w = _random_like(jax.ShapeDtypeStruct(k + (5, 4), jnp.float32), 1)
  g = _random_like(jax.ShapeDtypeStruct((2, hw[0] * s[0], hw[1] * s[1], 4), jnp.float32), 2)
  theirs = lambda x, w: jax.lax.conv_transpose(
    x,
    w,
    s,
    "SAME",  # what flax's ConvTranspose runs
    dimension_numbers=fast_conv.DIMENSION_NUMBERS,
  )
  ours = lambda x, w: fast_conv.conv_transpose2d(x, w, s)
  y, vjp = jax.vjp(jax.jit(ours), x, w)
  y_lax, vjp_lax = jax.vjp(jax.jit(theirs), x, w)
  _assert_close((y, vjp(g)), (y_lax, vjp_lax(g)))
  # In the models (strides 1 and 2) the layer takes this path too: same as flax.
  if max(s) == 2:
    _check_against_flax("ConvTranspose", k, s, hw, 2, (5, 4), monkeypatch)


def _check_against_flax(layer, k, s, hw, batch, channels, monkeypatch):
  k = (k, k) if isinstance(k, int) else k
  (cin, cout), pixels = channels, hw[0] * hw[1] * s[0] * s[1]
  # Small chunks, so the batch is split into a scan over chunks plus a remainder.
  monkeypatch.setattr(fast_conv, "PATCH_CHUNK_BYTES", 2 * pixels * k[0] * k[1] * max(cin, cout) * 4)
  ours = getattr(layers, layer)(cout, k, strides=s, padding="SAME")
  theirs = getattr(nn, layer)(cout, k, strides=s, padding="SAME")
  x = _random_like(jax.ShapeDtypeStruct((batch,) + hw + (cin,), jnp.float32), 0)
  params = _random_like(jax.eval_shape(theirs.init, jax.random.key(0), x)["params"], 1)
  probe = _random_like(jax.eval_shape(theirs.apply, {"params": params}, x), 2)
  y, grads = _outputs_and_grads(ours, params, x, probe)
  y_flax, grads_flax = _outputs_and_grads(theirs, params, x, probe)
  _assert_close(y, y_flax)
  _assert_close(grads, grads_flax)


def test_same_parameters_as_flax():
  x = jnp.zeros((1, 8, 8, 3))
  init = lambda ours, theirs: (ours.init(jax.random.key(1), x), theirs.init(jax.random.key(1), x))
  ours, theirs = jax.jit(
    lambda: (
      init(layers.Conv(4, (3, 3), strides=2), nn.Conv(4, (3, 3), strides=2)),
      init(
        layers.ConvTranspose(4, (3, 3), strides=(2, 2)), nn.ConvTranspose(4, (3, 3), strides=(2, 2))
      ),
    )
  )()
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_unsupported_settings_fall_back_to_flax():
  x = _random_like(jax.ShapeDtypeStruct((2, 6, 6, 3), jnp.float32), 0)
  for ours, theirs in [
    (layers.Conv(4, (3, 3), padding="VALID"), nn.Conv(4, (3, 3), padding="VALID")),
    (layers.Conv(4, (3, 3), strides=3), nn.Conv(4, (3, 3), strides=3)),
    (
      layers.ConvTranspose(4, (3, 3), strides=(2, 2), transpose_kernel=True),
      nn.ConvTranspose(4, (3, 3), strides=(2, 2), transpose_kernel=True),
    ),
  ]:
    variables = _random_like(jax.eval_shape(theirs.init, jax.random.key(1), x), 1)
    np.testing.assert_array_equal(
      jax.jit(ours.apply)(variables, x), jax.jit(theirs.apply)(variables, x)
    )


@pytest.mark.slow
def test_conv_autoencoder_same_loss_and_grads_as_native_ops(monkeypatch):
  model = autoencoder.ConvAutoencoder((8, 8, 1), channels=(4, 8), latent_dim=3)
  x = _random_like(jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.float32), 0)
  params = _random_like(jax.eval_shape(model.init, jax.random.key(1), x)["params"], 1)

  def loss_and_grads():
    loss = lambda p: jnp.mean((model.apply({"params": p}, x) - x) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  fast = loss_and_grads()
  monkeypatch.setattr(layers, "FAST_CPU_CONV", False)
  native = loss_and_grads()
  _assert_close(fast, native)


@pytest.mark.parametrize(
  "k,s,hw",
  [
    ((3, 3), (2, 2), (8, 8)),
    ((4, 4), (2, 2), (6, 4)),
    ((5, 3), (2, 2), (4, 6)),
    ((3, 3), (3, 3), (6, 9)),
    ((3, 3), (2, 2), (7, 7)),
  ],
)  # odd sides: XLA's gradient
def test_strided_conv_input_gradient_by_output_phases(k, s, hw, monkeypatch):
  monkeypatch.setattr(fast_conv, "PHASE_INPUT_GRAD_MIN_CIN", 1)
  monkeypatch.setattr(fast_conv, "NATIVE_STRIDED_MIN_CIN", 1)
  x = _random_like(jax.ShapeDtypeStruct((2,) + hw + (5,), jnp.float32), 0)
  w = _random_like(jax.ShapeDtypeStruct(k + (5, 4), jnp.float32), 1)
  pads = fast_conv.same_pads(hw, k, s)
  out = jax.eval_shape(lambda: fast_conv._native(x, w, s, pads))
  g = _random_like(out, 2)
  by_phase = fast_conv.strided_conv_input_grad(g, w, s, pads, x.shape)
  assert (by_phase is None) == (hw == (7, 7))
  expected = jax.vjp(lambda x, w: fast_conv._native(x, w, s, pads), x, w)[1](g)
  got = jax.vjp(lambda x, w: fast_conv.conv(x, w, s, pads), x, w)[1](g)
  _assert_close(got, expected)
  if max(s) == 2:
    _check_against_flax("Conv", k, s, hw, 2, (5, 4), monkeypatch)


def _documented_variance(name, shape):
  fan_in, fan_out = layers.fans(shape)
  return {
    "lecun": 1 / fan_in,
    "glorot": 2 / (fan_in + fan_out),
    "he": 2 / fan_in,
    "dcgan": 0.02**2,
  }[name.split("_")[0]]


def test_kernel_inits_have_the_documented_variances():
  shapes = [(512, 256), (3, 3, 32, 64)]  # a dense kernel; a conv one (receptive field 9)
  draws = jax.jit(  # one compilation for all of them
    lambda key: {
      name: [layers.kernel_init(name)(jax.random.fold_in(key, i), s) for i, s in enumerate(shapes)]
      for name in layers.KERNEL_INITS
    }
  )(jax.random.key(0))
  assert set(draws) == {
    "lecun_normal",
    "lecun_uniform",
    "glorot_uniform",
    "glorot_normal",
    "he_normal",
    "he_uniform",
    "dcgan_normal",
  }
  for name, kernels in draws.items():
    for shape, kernel in zip(shapes, kernels):
      kernel = np.asarray(kernel, np.float64)
      assert kernel.shape == shape and abs(kernel.mean()) < 1e-3
      np.testing.assert_allclose(kernel.var(), _documented_variance(name, shape), rtol=0.04)
      bound = np.abs(kernel).max() / np.sqrt(_documented_variance(name, shape))
      if name.endswith("_uniform"):  # U(-a, a) with a = sqrt(3 variance)
        assert np.sqrt(3) * 0.99 < bound <= np.sqrt(3) * (1 + 1e-6)
      elif name != "dcgan_normal":  # truncated at two of the untruncated draw's stddevs
        assert bound <= 2 / 0.87962566103423978 * (1 + 1e-6)
  assert 0.0195 < np.std(np.asarray(draws["dcgan_normal"][0])) < 0.0205


def test_dense_kernel_inits_are_flaxs_own_and_conv_kernel_init_is_unchanged():
  conv = (3, 3, 4, 8)

  @jax.jit  # one compilation
  def draws(key):
    pairs = [
      (layers.kernel_init(name)(key, shape), getattr(nn.initializers, name)()(key, shape))
      for name in ("lecun_normal", "glorot_uniform")
      for shape in [(128, 784), (784, 128)]
    ]
    # The FID feature network's conv init: flax's lecun_normal of the flattened kernel.
    flat = nn.initializers.lecun_normal()(key, (36, 8)).reshape(conv)
    return pairs + [(layers.conv_kernel_init(key, conv), flat)]

  for ours, theirs in draws(jax.random.key(3)):
    np.testing.assert_array_equal(ours, theirs)


def test_unknown_kernel_init_is_a_value_error_naming_the_argument():
  # Users' values are checked (naming --kernel_init) by model_flags.validate, not here.
  with pytest.raises(
    ValueError, match="^kernel_init must be one of glorot_uniform, .*dcgan_normal"
  ):
    layers.kernel_init("bogus")
