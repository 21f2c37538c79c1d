"""Model definitions: shapes, parameter counts of the standard architecture, registry errors."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from dl10_jax import models
from dl10_jax.errors import ConfigError


def _count(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_cnn_is_the_seed_architecture(cnn_smoke_config):
  model = models.build(cnn_smoke_config.model)
  x = jnp.zeros((2, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  shapes = jax.tree.map(lambda p: p.shape, variables['params'])
  assert shapes == {
      'Conv2D_0': {'kernel': (3, 3, 1, 32), 'bias': (32,)},
      'Conv2D_1': {'kernel': (3, 3, 32, 64), 'bias': (64,)},
      'Dense_0': {'kernel': (12 * 12 * 64, 128), 'bias': (128,)},  # VALID convs, then 2x2 pool.
      'Dense_1': {'kernel': (128, 10), 'bias': (10,)},
  }
  assert _count(variables['params']) == 1_199_882  # Keras' summary of the seed model.
  assert model.apply(variables, x).shape == (2, 10)


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
