"""The CPU-friendly layer implementations equal XLA's native ops, in value and gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl10_jax.models import layers


@pytest.mark.parametrize('shape,features,kernel,padding', [
    ((4, 28, 28, 1), 32, (3, 3), 'VALID'),  # The CNN's first layer.
    ((3, 26, 26, 32), 64, (3, 3), 'VALID'),  # Its second.
    ((2, 7, 9, 5), 3, (3, 3), 'SAME'),  # Awkward: odd sizes, non-square.
    ((2, 6, 5, 4), 7, (5, 2), 'SAME'),  # Even kernel side: SAME pads unevenly.
])
def test_patches_conv_matches_xla(shape, features, kernel, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  make = lambda impl: layers.Conv2D(features, kernel, padding=padding, impl=impl)
  params = make('xla').init(jax.random.PRNGKey(1), x)
  reference = nn.Conv(features, kernel, padding=padding).apply(params, x)

  def loss(params, x, impl):
    return jnp.sum(jnp.sin(make(impl).apply(params, x)))

  for impl in ('xla', 'patches'):
    np.testing.assert_allclose(make(impl).apply(params, x), reference, rtol=1e-4, atol=1e-4)
  grads = {impl: jax.grad(loss, argnums=(0, 1))(params, x, impl) for impl in ('xla', 'patches')}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               grads['xla'], grads['patches'])


def test_conv_impl_auto_and_bad_value():
  assert layers.resolve_conv_impl('auto') == ('patches' if jax.default_backend() == 'cpu'
                                              else 'xla')
  with pytest.raises(ValueError, match="conv_impl='fft'.*auto, xla, patches"):
    layers.resolve_conv_impl('fft')


@pytest.mark.parametrize('shape', [(2, 24, 24, 8), (3, 7, 5, 2)])  # Odd sides are cropped.
def test_max_pool_2x2_matches_flax(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)  # Continuous values: no tied maxima.
  pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), pool(x))
  cotangent = jax.random.normal(jax.random.PRNGKey(1), pool(x).shape)
  grad = lambda f: jax.vjp(f, x)[1](cotangent)[0]
  np.testing.assert_array_equal(grad(layers.max_pool_2x2), grad(pool))


def test_max_pool_2x2_gradient_goes_to_the_first_of_tied_maxima():
  x = jnp.array([[1., 1.], [1., 1.]])[None, :, :, None]  # One window, four equal values.
  x = jnp.concatenate([x, jnp.array([[0., 2.], [2., 1.]])[None, :, :, None]])
  pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  for f in (layers.max_pool_2x2, pool):
    grad = jax.grad(lambda x: f(x).sum())(x)
    np.testing.assert_array_equal(grad[..., 0], [[[1, 0], [0, 0]], [[0, 1], [0, 0]]])
