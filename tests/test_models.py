"""Model definitions: shapes, parameter counts of the standard architecture, registry errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dl10_jax import models
from dl10_jax.models.cnn import CNN
from dl10_jax.errors import ConfigError


def _count(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_cnn_is_the_seed_architecture(cnn_smoke_config):
  model = models.build(cnn_smoke_config.model)
  x = jnp.zeros((2, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  shapes = jax.tree.map(lambda p: p.shape, variables['params'])
  assert shapes == {
      'features': {'Conv2D_0': {'kernel': (3, 3, 1, 32), 'bias': (32,)},
                   'Conv2D_1': {'kernel': (3, 3, 32, 64), 'bias': (64,)}},
      'Dense_0': {'kernel': (12 * 12 * 64, 128), 'bias': (128,)},  # VALID convs, then 2x2 pool.
      'Dense_1': {'kernel': (128, 10), 'bias': (10,)},
  }
  assert _count(variables['params']) == 1_199_882  # Keras' summary of the seed model.
  assert model.apply(variables, x).shape == (2, 10)


@pytest.mark.parametrize('batch', [32, 12])
def test_cnn_cpu_fast_path_equals_xla_convolution(batch):
  """conv_impl=patches computes the same function and gradients as XLA's convolution."""
  x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 28, 28, 1))
  labels = jnp.arange(batch) % 10
  reference = CNN(conv_impl='xla')
  variables = reference.init(jax.random.PRNGKey(1), x)

  def loss_and_grads(model):
    def loss(v):
      logits = model.apply(v, x)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    return jax.value_and_grad(loss)(variables)

  with jax.default_matmul_precision('highest'):
    want_loss, want = loss_and_grads(reference)
    model = CNN(conv_impl='patches')
    assert jax.tree.structure(model.init(jax.random.PRNGKey(1), x)) == \
        jax.tree.structure(variables)  # Same checkpoint layout whatever the implementation.
    got_loss, got = loss_and_grads(model)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  # XLA's CPU convolution is itself only ~1e-3 accurate in the weight gradient (the patches
  # path matches float64 to ~4e-6), hence the tolerance relative to each gradient's scale.
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=5e-3 * np.abs(w).max()),
               got, want)


def test_cnn_bfloat16_compute_keeps_float32_params(cnn_smoke_config):
  model = models.build(cnn_smoke_config.model, dtype=jnp.bfloat16)
  x = jnp.ones((2, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits = model.apply(variables, x)
  assert logits.dtype == jnp.float32  # The loss is always computed in float32.
  full = models.build(cnn_smoke_config.model).apply(variables, x)
  assert jnp.allclose(logits, full, atol=0.1, rtol=0.05)


def test_unknown_model_or_field_is_a_config_error():
  with pytest.raises(ConfigError, match="model.name='vgg' is unknown; allowed: cnn"):
    models.build(ml_collections.ConfigDict({'name': 'vgg'}))
  with pytest.raises(ConfigError, match='model.widht is not a field of cnn'):
    models.build(ml_collections.ConfigDict({'name': 'cnn', 'widht': 3}))
