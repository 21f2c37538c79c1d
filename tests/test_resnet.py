"""ResNet: torchvision's parameter counts, BatchNorm state, training through main, augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import read_metrics, run_module
from configs import resnet as resnet_config
from dl10_jax import data
from dl10_jax.data import augment
from dl10_jax.errors import ConfigError
from dl10_jax.models.resnet import ResNet
from dl10_jax.train.experiment import build_experiment
from dl10_jax.train.trainer import train_and_evaluate


def _count(variables):
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def _shapes(model, hw, channels):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, hw, hw, channels))))


@pytest.mark.parametrize('depth,params', [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032),
                                          (101, 44_549_160), (152, 60_192_808)])
def test_imagenet_resnets_have_torchvisions_parameter_counts(depth, params):
  model = ResNet(num_classes=1000, depth=depth, style='imagenet', shortcut='projection')
  assert _count(_shapes(model, 224, 3)) == params


@pytest.mark.parametrize('depth,shortcut,params', [(20, 'pad', 269_722), (20, 'projection', 272_474),
                                                   (56, 'pad', 853_018), (110, 'pad', 1_727_962)])
def test_cifar_resnets_have_the_papers_sizes(depth, shortcut, params):
  # He et al. 2015, Table 6: 0.27 M (20), 0.85 M (56), 1.7 M (110) with option A shortcuts.
  assert _count(_shapes(ResNet(depth=depth, shortcut=shortcut), 32, 3)) == params


@pytest.mark.parametrize('hw,channels,style', [(28, 1, 'cifar'), (32, 3, 'cifar'),
                                               (224, 3, 'imagenet')])
def test_output_shapes(hw, channels, style):
  model = ResNet(num_classes=7, depth=20 if style == 'cifar' else 18, style=style,
                 shortcut='pad' if style == 'cifar' else 'projection')
  out = jax.eval_shape(model.apply, _shapes(model, hw, channels),
                       jax.ShapeDtypeStruct((2, hw, hw, channels), jnp.float32))
  assert out.shape == (2, 7) and out.dtype == jnp.float32


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_eval():
  model = ResNet(depth=8, conv_impl='xla')
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 12, 12, 1)) * 3 + 1
  variables = model.init(jax.random.PRNGKey(1), x)
  train = jax.jit(lambda xs: model.apply(variables, xs, train=True, mutable=['batch_stats']))
  logits, updated = train(x)
  before = variables['batch_stats']['stem_bn']
  after = updated['batch_stats']['stem_bn']
  assert not np.allclose(before['mean'], after['mean'])  # Running stats move towards the batch's.
  # Eval: each example's output is its own (no batch statistics).
  evaluate = jax.jit(lambda xs: model.apply({**variables, **updated}, xs))
  np.testing.assert_allclose(evaluate(x[:3]), evaluate(x)[:3], atol=1e-5)
  # Training: the same example gives another output in another batch.
  assert not np.allclose(logits[:3], train(x[:3])[0], atol=1e-3)


def test_zero_init_residual_makes_each_block_start_as_its_shortcut():
  model = ResNet(depth=8, zero_init_residual=True, conv_impl='xla')
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  scales = variables['params']['stage1_block1']['BatchNorm_1']['scale']
  assert np.all(scales == 0)
  assert np.all(variables['params']['stage1_block1']['BatchNorm_0']['scale'] == 1)


def test_patches_and_xla_convolutions_give_the_same_resnet():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 14, 14, 1))
  make = lambda impl: ResNet(depth=8, shortcut='projection', conv_impl=impl)
  variables = make('xla').init(jax.random.PRNGKey(1), x)

  def loss(params, impl):
    logits, _ = make(impl).apply({**variables, 'params': params}, x, train=True,
                                 mutable=['batch_stats'])
    return jnp.sum(jnp.sin(logits))

  grads = {impl: jax.jit(jax.grad(loss), static_argnums=1)(variables['params'], impl)
           for impl in ('xla', 'patches')}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4),
               grads['xla'], grads['patches'])


@pytest.mark.parametrize('field,value,message', [
    ('depth', 21, 'model.depth=21 is not a CIFAR ResNet; allowed: 6n\\+2'),
    ('style', 'tiny', "model.style='tiny' is not supported; allowed: cifar, imagenet"),
    ('shortcut', 'dense', "model.shortcut='dense' is not supported"),
])
def test_bad_architecture_is_one_line(field, value, message):
  with pytest.raises(ConfigError, match=message):
    _shapes(ResNet(**{field: value}), 28, 1)


@pytest.mark.slow
def test_smoke_config_trains_through_main_and_lowers_the_loss(tmp_path):
  result = run_module('dl10_jax.main', '--config', 'configs/resnet.py:smoke', '--workdir',
                      str(tmp_path), '--config.num_epochs=4', '--config.learning_rate=0.05')
  assert result.returncode == 0, result.stderr
  losses = [m['train_loss'] for m in read_metrics(tmp_path) if 'train_loss' in m]
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  final = [m for m in read_metrics(tmp_path) if 'eval_accuracy' in m][-1]
  # Rerunning the finished run restores its checkpoint and only evaluates: the same numbers need
  # the BatchNorm running statistics restored exactly.
  config = resnet_config.get_config('smoke')
  config.update(num_epochs=4, learning_rate=0.05)
  again = train_and_evaluate(config, tmp_path)
  assert again == {k: final[k] for k in ('eval_loss', 'eval_accuracy')}


def test_micro_batches_with_batch_norm_must_be_chosen_as_ghost_batch_norm():
  config = resnet_config.get_config('smoke')
  config.microbatch_size = 16
  with pytest.raises(ConfigError, match='has BatchNorm, and microbatch_size=16.*ghost_batch_norm'):
    build_experiment(config, jax.devices()[:1])
  config.ghost_batch_norm = True
  build_experiment(config, jax.devices()[:1])


def test_augmentation_is_seeded_by_stream_position_and_resumes_exactly():
  config = resnet_config.get_config('smoke').dataset
  splits = data.load(config)
  assert splits.augment is not None
  make = lambda: data.train_iterator(splits.train, 8, 0, 1, splits.preprocess, splits.augment)
  it = make()
  first = next(it)['image']
  saved = it.get_state()
  want = [next(it)['image'] for _ in range(3)]
  resumed = make()
  resumed.set_state(saved)
  for expected in want:
    np.testing.assert_array_equal(next(resumed)['image'], expected)
  np.testing.assert_array_equal(next(make())['image'], first)
  plain = data.train_iterator(splits.train, 8, 0, 1, splits.preprocess)
  assert not np.array_equal(next(plain)['image'], first)  # Augmented at all.


def config_with(**fields):
  config = resnet_config.get_config('smoke').dataset
  config.update(fields)
  return config


def test_random_crop_shifts_and_flip_mirrors():
  images = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5, 1) + 1
  rng = np.random.default_rng(0)
  cropped = augment.random_crop(images, rng, padding=2)
  for src, out in zip(images, cropped):
    # Some shift (dy, dx) in [-2, 2]^2 maps the image onto the crop, zeros where it falls off.
    assert any(np.array_equal(out, np.roll(np.pad(src, ((2, 2), (2, 2), (0, 0))), (dy, dx),
                                           (0, 1))[2:7, 2:7])
               for dy in range(-2, 3) for dx in range(-2, 3))
  flipped = augment.random_flip(images, np.random.default_rng(1))
  for src, out in zip(images, flipped):
    assert np.array_equal(out, src) or np.array_equal(out, src[:, ::-1])
  with pytest.raises(ConfigError, match="dataset.augment has 'rotate'; allowed: crop, flip"):
    augment.from_config(config_with(augment='rotate'))


def _events(workdir, key):
  return [m[key] for m in read_metrics(workdir) if key in m]


@pytest.mark.slow
def test_cifar10_by_tfds_name_trains(tmp_path):
  """`dataset.name=cifar10` goes through tfds.data_source (mocked: no network), with augmentation."""
  import tensorflow_datasets as tfds
  config = resnet_config.get_config('smoke')
  config.dataset.update(name='cifar10', crop_padding=4, num_train_examples=-1,
                        num_eval_examples=-1)
  config.num_train_steps = 3
  with tfds.testing.mock_data(num_examples=64):
    final = train_and_evaluate(config, tmp_path)
  assert np.isfinite(final['eval_loss']) and 0 <= final['eval_accuracy'] <= 1


def test_init_from_carries_the_batch_norm_statistics(tmp_path):
  """Fine-tuning starts from the trained model: its step-0 eval is the source run's final eval."""
  config = resnet_config.get_config('smoke')
  config.num_train_steps = 4
  source = train_and_evaluate(config, tmp_path / 'source', devices=jax.devices()[:1])
  config.update(init_from=str(tmp_path / 'source'), num_train_steps=3)
  train_and_evaluate(config, tmp_path / 'finetune', devices=jax.devices()[:1])
  step0 = [m for m in read_metrics(tmp_path / 'finetune') if m['step'] == 0][0]
  assert step0['eval_loss'] == pytest.approx(source['eval_loss'], rel=1e-5)
