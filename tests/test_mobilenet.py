"""MobileNet V1/V2 and ShuffleNet V2: reference parameter counts, shapes, depthwise kernels, BN.

ImageNet sizes are only traced (`jax.eval_shape`); real forward passes use small widths.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dl10_jax import models
from dl10_jax.errors import ConfigError
from dl10_jax.models.mobilenet import MobileNetV1, MobileNetV2, ShuffleNetV2

# class, name of its last feature module, side of that map for 28 and 32 px with small_input,
# number of depthwise convs, the smallest width's kwargs.
MODELS = {'v1': (MobileNetV1, 'block13', 2, 13, {'width_multiplier': 0.25}),
          'v2': (MobileNetV2, 'last', 4, 17, {'width_multiplier': 0.25}),
          'shufflenet': (ShuffleNetV2, 'conv5', 4, 4 + 8 + 4 + 3, {'width': 0.5})}


def _count(params):
  return sum(x.size for x in jax.tree.leaves(params))


def _apply_with_features(model, variables, x, last, **kwargs):
  """(logits, the output of module `last`)."""
  logits, state = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == last,
                              mutable=['intermediates'], **kwargs)
  return logits, state['intermediates'][last]['__call__'][0]


def _variables(model, x):
  """Random variables without compiling `model.init` (its random draws compile slowly on CPU):
  Kaiming fan-in normal kernels, the rest as initialised (BN scale 1, biases and means 0)."""
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    return (np.ones if name in ('scale', 'var') else np.zeros)(leaf.shape, np.float32)

  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _others_changed(x):
  """x with every example but the first replaced."""
  return x.at[1:].set(jax.random.normal(jax.random.PRNGKey(9), x[1:].shape))


@functools.cache
def _imagenet(name, **kwargs):
  """Traced (variables, logits, last features) of the ImageNet model at 224 px, 1000 classes."""
  cls, last, *_ = MODELS[name]
  model = cls(num_classes=1000, small_input=False, conv_impl='xla', **kwargs)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  return variables, *jax.eval_shape(
      functools.partial(_apply_with_features, model, last=last), variables, x)


@pytest.mark.parametrize('name,kwargs,count', [
    ('v1', {}, 4_231_976),  # Keras' MobileNet (alpha 1.0, 224), trainable parameters.
    ('v2', {}, 3_504_872),  # torchvision mobilenet_v2.
    ('shufflenet', {}, 2_278_604),  # torchvision shufflenet_v2_x1_0 ...
    ('shufflenet', {'width': 2.0}, 7_393_996),  # ... x2_0
])
def test_imagenet_parameter_counts_and_shapes(name, kwargs, count):
  variables, logits, features = _imagenet(name, **kwargs)
  assert _count(variables['params']) == count
  assert (logits.shape, logits.dtype) == ((2, 1000), jnp.float32)
  assert features.shape[1:3] == (7, 7)  # The papers' total stride of 32.


@pytest.mark.parametrize('name', MODELS)
def test_depthwise_convs_have_one_input_channel_per_group(name):
  _, _, _, num_depthwise, _ = MODELS[name]
  params = flax.traverse_util.flatten_dict(_imagenet(name)[0]['params'])
  kernels = {path: p.shape for path, p in params.items() if path[-1] == 'kernel'}
  depthwise = {path: shape for path, shape in kernels.items()
               if len(path) > 2 and path[-3].endswith('dw')}  # [..., 'dw', 'conv', 'kernel']
  assert len(depthwise) == num_depthwise
  for path, shape in depthwise.items():
    assert shape[:3] == (3, 3, 1), path  # [3, 3, 1, C]: one input channel per output.
  # Every other conv is dense: the stem 3x3, the rest 1x1.
  assert all(shape[:2] == (1, 1) or path[0] == 'stem' for path, shape in kernels.items()
             if path not in depthwise and len(shape) == 4)


@pytest.mark.parametrize('name', MODELS)
def test_small_input_eval_forward_is_per_example(name):
  cls, last, side, _, small = MODELS[name]
  model = cls(**small)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 1))  # Fashion-MNIST-like.
  variables = _variables(model, x)
  run = jax.jit(functools.partial(_apply_with_features, model, last=last))
  (logits, features), (others, _) = run(variables, x), run(variables, _others_changed(x))
  assert (logits.shape, logits.dtype) == ((4, 10), jnp.float32)
  assert np.isfinite(logits).all()
  assert features.shape[1:3] == (side, side)  # Fewer early strides: not 1x1.
  # Eval uses the running statistics: an example's logits do not depend on the rest of the batch.
  np.testing.assert_allclose(others[0], logits[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', MODELS)
def test_small_input_train_forward_updates_batch_statistics(name):
  cls, last, side, _, small = MODELS[name]
  no_dropout = {'dropout_rate': 0.0} if cls is MobileNetV2 else {}
  model = cls(**small, **no_dropout)  # Train-mode differences then come from BN alone.
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))  # CIFAR-like.
  variables = _variables(model, x)

  @jax.jit
  def run(x):
    logits, state = model.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'],
                                capture_intermediates=lambda m, _: m.name == last,
                                rngs={'dropout': jax.random.PRNGKey(2)})
    return logits, state['intermediates'][last]['__call__'][0], state['batch_stats']

  logits, features, batch_stats = run(x)
  assert (logits.shape, logits.dtype) == ((4, 10), jnp.float32)
  assert features.shape[1:3] == (side, side)
  moved = lambda a, b: not np.allclose(a, b)
  changed = flax.traverse_util.flatten_dict(
      jax.tree.map(moved, variables['batch_stats'], batch_stats))
  assert all(v for path, v in changed.items() if path[-1] == 'var')
  # Most means move too; not those of a linear conv after a BN without ReLU (zero-mean input).
  assert np.mean([v for path, v in changed.items() if path[-1] == 'mean']) > 0.5
  # Training normalises with the batch's statistics: the rest of the batch matters.
  assert not np.allclose(run(_others_changed(x))[0][0], logits[0], atol=1e-3)


def test_conv_impls_give_the_same_logits_and_statistics():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  make = lambda impl: MobileNetV1(width_multiplier=0.25, conv_impl=impl)  # dw, 1x1, 3x3; s1, s2.
  variables = _variables(make('xla'), x)
  run = lambda impl: jax.jit(functools.partial(make(impl).apply, train=True,
                                               mutable=['batch_stats']))(variables, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               run('xla'), run('patches'))


def test_resolution_multiplier_resizes_the_input():
  model = MobileNetV1(1000, resolution_multiplier=0.5, small_input=False, conv_impl='xla')
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  _, stem = jax.eval_shape(functools.partial(_apply_with_features, model, last='stem'),
                           variables, x)
  assert stem.shape == (1, 56, 56, 32)  # 224 * 0.5 = 112, then the stride-2 stem.
  assert _count(variables['params']) == 4_231_976  # Resolution does not change parameters.


@pytest.mark.parametrize('cls,field,value,message', [
    (MobileNetV1, 'width_multiplier', 0.0, 'model.width_multiplier=0.0 is out of range; '
                                          'allowed: > 0'),
    (MobileNetV2, 'width_multiplier', -1.0, 'model.width_multiplier=-1.0 is out of range'),
    (MobileNetV1, 'resolution_multiplier', 0.0, 'model.resolution_multiplier=0.0 is out of'),
    (ShuffleNetV2, 'width', 0.75, 'model.width=0.75 is not a ShuffleNetV2 width; allowed: 0.5, '
                                  '1.0, 1.5, 2.0'),
])
def test_bad_width_is_a_config_error(cls, field, value, message):
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with pytest.raises(ConfigError, match=message):
    jax.eval_shape(cls(**{field: value}).init, jax.random.PRNGKey(0), x)


def test_registry_builds_them():
  for name, cls in [('mobilenet_v1', MobileNetV1), ('mobilenet_v2', MobileNetV2),
                    ('shufflenet_v2', ShuffleNetV2)]:
    model = models.build(ml_collections.ConfigDict({'name': name, 'num_classes': 7}))
    assert isinstance(model, cls) and model.num_classes == 7
