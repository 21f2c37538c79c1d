"""The CPU-friendly layer implementations equal XLA's native ops, in value and gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl10_jax.models import layers


@pytest.mark.parametrize('shape,features,kernel,stride,padding,groups', [
    ((4, 28, 28, 1), 32, (3, 3), 1, 'VALID', 1),  # The CNN's first layer.
    ((3, 26, 26, 32), 64, (3, 3), 1, 'VALID', 1),  # Its second.
    ((2, 7, 9, 5), 3, (3, 3), 1, 'SAME', 1),  # Awkward: odd sizes, non-square.
    ((2, 6, 5, 4), 7, (5, 2), 1, 'SAME', 1),  # Even kernel side: SAME pads unevenly.
    ((4, 28, 28, 16), 32, (3, 3), 2, 'SAME', 1),  # ResNet's downsampling conv.
    ((2, 15, 9, 6), 5, (3, 3), 2, 'SAME', 1),  # Odd sides with stride 2.
    ((2, 11, 10, 3), 4, (3, 3), 2, 'VALID', 1),
    ((4, 14, 14, 32), 64, (1, 1), 1, 'SAME', 1),  # Pointwise.
    ((4, 15, 15, 16), 32, (1, 1), 2, 'SAME', 1),  # A projection shortcut, odd side.
    ((4, 14, 14, 32), 32, (3, 3), 1, 'SAME', 32),  # Depthwise.
    ((2, 15, 13, 24), 24, (3, 3), 2, 'SAME', 24),  # Depthwise, stride 2, odd sides.
    ((2, 9, 9, 8), 8, (5, 5), 2, 'SAME', 8),  # Depthwise 5x5 (MobileNetV3-like).
    ((2, 8, 8, 8), 16, (3, 3), 1, 'SAME', 4),  # Grouped but not depthwise: XLA's conv.
])
def test_patches_conv_matches_xla(shape, features, kernel, stride, padding, groups):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  make = lambda impl: layers.Conv2D(features, kernel, strides=stride, padding=padding,
                                    feature_group_count=groups, impl=impl)
  params = make('xla').init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # A non-zero bias.
  reference = nn.Conv(features, kernel, strides=stride, padding=padding,
                      feature_group_count=groups).apply(params, x)

  def loss(params, x, impl):
    return jnp.sum(jnp.sin(make(impl).apply(params, x)))

  for impl in ('xla', 'patches'):
    np.testing.assert_allclose(make(impl).apply(params, x), reference, rtol=1e-4, atol=1e-4)
  grads = {impl: jax.grad(loss, argnums=(0, 1))(params, x, impl) for impl in ('xla', 'patches')}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               grads['xla'], grads['patches'])


def test_conv_without_bias_and_bad_groups():
  x = jnp.ones((1, 5, 5, 6))
  params = layers.Conv2D(4, use_bias=False).init(jax.random.PRNGKey(0), x)
  assert set(params['params']) == {'kernel'}
  with pytest.raises(ValueError, match='feature_group_count=4 must divide the input channels '
                                       r'\(6\) and the output channels \(4\)'):
    layers.Conv2D(4, feature_group_count=4).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="padding='CIRCULAR'.*VALID, SAME"):
    layers.Conv2D(4, padding='CIRCULAR').init(jax.random.PRNGKey(0), x)


def test_conv_impl_auto_and_bad_value():
  cpu = jax.default_backend() == 'cpu'
  assert layers.resolve_conv_impl('auto', (3, 3, 8, 32), 4) == 'xla'  # Grouped, not depthwise.
  assert layers.resolve_conv_impl('auto', (3, 3, 1, 32), 32) == ('patches' if cpu else 'xla')
  assert layers.resolve_conv_impl('auto', (1, 1, 16, 32)) == ('patches' if cpu else 'xla')
  assert layers.resolve_conv_impl('auto', (3, 3, 16, 32)) == 'xla'
  assert layers.resolve_conv_impl('patches', (3, 3, 16, 32)) == ('patches' if cpu else 'xla')
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
