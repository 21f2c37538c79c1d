"""DCGAN: shapes, the transposed convolution against its reference, losses from logits, the order
and separation of the two updates, EMA, exact resume after SIGKILL, main -> sample."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax import lax

from conftest import (metric_events, read_metrics, run_main, run_module, run_until_killed,
                      this_process_cache_env)
from configs import gan as gan_config
from dl10_jax.errors import ConfigError
from dl10_jax.models import gan
from dl10_jax.train import gan as gan_objective
from dl10_jax.train.experiment import build_experiment
from dl10_jax.train.state import ema_update
from dl10_jax.train.trainer import train_and_evaluate
from test_image_quality import classifier_dir  # noqa: F401  (a session fixture)


def _smoke(**fields):
  config = gan_config.get_config('smoke')
  config.quality_metric = False
  config.update(fields)
  return config


@pytest.mark.parametrize('size,channels,grid', [(28, 1, 7), (32, 3, 4)])
def test_shapes_for_both_image_sizes(size, channels, grid):
  model = gan.DCGAN(image_size=size, channels=channels, latent_dim=16, features=8)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((2, 16)))
  assert set(variables['params']) == set(variables['batch_stats']) == {'generator', 'discriminator'}
  images = jax.eval_shape(lambda v, z: model.apply(v, z, method=model.generate), variables,
                          jnp.zeros((3, 16)))
  assert images.shape == (3, size, size, channels) and images.dtype == jnp.float32
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, method=model.discriminate), variables,
                          images)
  assert logits.shape == (3,)
  assert gan.upsamplings(size)[0] == grid
  dense = variables['params']['generator']['Dense_0']['kernel']
  assert dense.shape == (16, grid * grid * 8 * 2 ** (gan.upsamplings(size)[1] - 1))


def test_generator_features_widen_the_generator_alone():
  shapes = lambda **kw: jax.eval_shape(gan.DCGAN(latent_dim=16, features=8, **kw).init,
                                       jax.random.PRNGKey(0), jnp.zeros((2, 16)))['params']
  same, wide = shapes(), shapes(generator_features=12)
  assert jax.tree.map(lambda a: a.shape, wide['discriminator']) == \
      jax.tree.map(lambda a: a.shape, same['discriminator'])
  assert wide['generator']['Dense_0']['kernel'].shape == (16, 7 * 7 * 12 * 2)  # 28 = 7 x 2^2.
  assert same['generator']['Dense_0']['kernel'].shape == (16, 7 * 7 * 8 * 2)


@pytest.mark.parametrize('cout,form', [(6, 'auto'), (gan.PATCHES_MIN_FEATURES, 'auto'),
                                       (6, 'patches'), (gan.PATCHES_MIN_FEATURES, '3x3')])
def test_transposed_convolution_is_the_adjoint_of_the_strided_convolution(cout, form):
  """PyTorch's ConvTranspose2d(4, stride 2, padding 1) is the gradient of Conv2d(4, 2, 1): in
  value, and in the gradients of the input and the kernel."""
  rng = np.random.default_rng(0)
  x, kernel = rng.normal(size=(2, 5, 7, 3)), rng.normal(size=(4, 4, 3, cout))
  x, kernel = jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32)

  def reference(x, kernel):
    conv = lambda z: lax.conv_general_dilated(z, kernel.transpose(0, 1, 3, 2), (2, 2),
                                              ((1, 1), (1, 1)),
                                              dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jax.vjp(conv, jnp.zeros((2, 10, 14, cout)))[1](x)[0]

  conv_transpose = lambda x, kernel: gan.conv_transpose_2x(x, kernel, form)
  np.testing.assert_allclose(conv_transpose(x, kernel), reference(x, kernel),
                             rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(rng.normal(size=(2, 10, 14, cout)), jnp.float32)
  loss = lambda f: jax.grad(lambda x, k: (f(x, k) * weights).sum(), argnums=(0, 1))(x, kernel)
  for got, want in zip(loss(conv_transpose), loss(reference)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ConfigError, match='model.image_size=30 is not 4..7 times a power of two'):
    gan.upsamplings(30)
  with pytest.raises(ConfigError, match="form='4x4'"):
    gan.conv_transpose_2x(x, kernel, '4x4')


def test_losses_come_from_logits_and_stay_finite_when_d_is_sure():
  sure = jnp.array([-200.0, 200.0])
  np.testing.assert_allclose(gan_objective.generator_loss(sure), 100.0, rtol=1e-6)  # -log s(-200)/2
  assert gan_objective.discriminator_loss(sure[::-1], sure) == pytest.approx(200.0, rel=1e-6)
  zero = jnp.zeros(4)
  assert gan_objective.discriminator_loss(zero, zero) == pytest.approx(2 * np.log(2), rel=1e-6)
  # One-sided smoothing: the real target is 0.9, so a sure D pays for it; fakes keep target 0.
  smoothed = gan_objective.discriminator_loss(jnp.array([200.0]), jnp.array([-200.0]), 0.1)
  assert smoothed == pytest.approx(0.1 * 200, rel=1e-5)


def test_ema_update_formula():
  ema, params = {'w': jnp.zeros(3)}, {'w': jnp.ones(3)}
  late = ema_update(ema, params, 0.9, jnp.asarray(1000))
  np.testing.assert_allclose(late['w'], 0.1, rtol=1e-6)  # (1 - decay) of the new weights.
  early = ema_update(ema, params, 0.999, jnp.asarray(0))
  np.testing.assert_allclose(early['w'], 0.9, rtol=1e-6)  # d = min(0.999, 1 / 10).


@pytest.fixture(scope='module')
def one_step():
  """(step(d_lr, g_lr) -> (state before, state after, metrics), the objective): one compilation,
  the learning rates live in the optimizer states."""
  config = _smoke()
  config.gan.update(r1_weight=10.0, label_smoothing=0.1)  # Both options on: one compilation.
  exp = build_experiment(config, jax.devices()[:1])
  objective = exp.objective
  objective.tx = {net: optax.inject_hyperparams(optax.adam)(learning_rate=2e-4, b1=0.5)
                  for net in gan_objective.NETS}
  batch = exp.example_batch()
  state = jax.jit(objective.init_state)(jax.random.PRNGKey(0), batch)
  train_step = jax.jit(objective.train_step)

  def step(d_lr=2e-4, g_lr=2e-4):
    rates = {'generator': g_lr / 2e-4, 'discriminator': d_lr / 2e-4}  # Same dtypes: no recompile.
    opt_state = {net: s._replace(hyperparams={**s.hyperparams,
                                              'learning_rate': s.hyperparams['learning_rate'] *
                                              rates[net]})
                 for net, s in state.opt_state.items()}
    return (state,) + train_step(state.replace(opt_state=opt_state), batch)

  return step, objective


def _same(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def test_each_network_moves_only_by_its_own_loss_and_g_sees_the_updated_d(one_step):
  step, objective = one_step
  state, both, metrics = step()
  _, d_frozen, _ = step(d_lr=0.0)
  _, g_frozen, _ = step(g_lr=0.0)
  # D's update does not depend on G's optimizer; G's does on D's (it sees the updated D).
  assert _same(g_frozen.params['discriminator'], both.params['discriminator'])
  assert _same(g_frozen.params['generator'], state.params['generator'])
  assert _same(d_frozen.params['discriminator'], state.params['discriminator'])
  assert not _same(d_frozen.params['generator'], state.params['generator'])
  assert not _same(d_frozen.params['generator'], both.params['generator'])
  # Both networks' BN statistics move, from their own passes; EMA = d * old + (1 - d) * new.
  assert not _same(both.model_state['generator'], state.model_state['generator'])
  assert not _same(both.model_state['discriminator'], state.model_state['discriminator'])
  d = 0.1  # min(0.999, (1 + 0) / (10 + 0)) at step 0.
  jax.tree.map(lambda e, old, new: np.testing.assert_allclose(e, d * old + (1 - d) * new,
                                                              rtol=1e-5, atol=1e-7),
               both.ema_params, state.ema_params, both.params['generator'])
  assert int(both.step) == 1
  assert set(metrics) == {'train_d_loss', 'train_g_loss', 'train_d_real', 'train_d_fake',
                          'train_r1', 'train_d_adversarial_loss'}
  assert metrics['train_r1'] > 0
  assert metrics['train_d_loss'] > metrics['train_d_adversarial_loss']  # + r1_weight / 2 * r1
  with pytest.raises(ConfigError, match=r'a GAN samples in one pass; .* \(eta, sampler\)'):
    objective.generate(both, jax.random.PRNGKey(0), 4, sampler='ddim', eta=0.0)


def test_reuse_fakes_steps_g_along_its_gradient_on_the_batch_d_just_saw():
  """With SGD at rate 1, G's update is minus the gradient of the non-saturating loss of the
  updated D on G(z) for the noise z of D's own fake batch."""
  config = _smoke()
  config.gan.reuse_fakes = True
  exp = build_experiment(config, jax.devices()[:1])
  objective = exp.objective
  objective.tx = {net: optax.sgd(1.0) for net in gan_objective.NETS}
  batch = exp.example_batch()
  state = jax.jit(objective.init_state)(jax.random.PRNGKey(0), batch)
  new, metrics = jax.jit(objective.train_step)(state, batch)

  z = objective._noise(jax.random.split(state.step_rng())[0], batch['image'].shape[0])
  params = {**state.params, 'discriminator': new.params['discriminator']}

  def g_loss(g_params):
    p = {**params, 'generator': g_params}
    images, _ = objective._apply('generator', p, state.model_state, z, True)
    return gan_objective.generator_loss(
        objective._apply('discriminator', p, new.model_state, images, True)[0])

  loss, grads = jax.value_and_grad(g_loss)(state.params['generator'])
  np.testing.assert_allclose(metrics['train_g_loss'], loss, rtol=1e-5)
  jax.tree.map(lambda got, old, g: np.testing.assert_allclose(got, old - g, rtol=1e-4, atol=1e-6),
               new.params['generator'], state.params['generator'], grads)
  assert not _same(new.model_state['generator'], state.model_state['generator'])  # One pass.


def test_grad_clip_norm_bounds_each_networks_update(one_step):
  """Clipped to norm c, Adam's first update lr * g / (|g| + eps) has norm <= lr * c / eps: far
  below the unclipped one (about lr per weight)."""
  config = _smoke(grad_clip_norm=1e-10)
  exp = build_experiment(config, jax.devices()[:1])
  batch = exp.example_batch()
  state = exp.init(jax.random.PRNGKey(0), batch)
  new, metrics = jax.jit(exp.objective.train_step)(state, batch)
  assert np.isfinite(metrics['train_d_loss'])
  norm = lambda a, b: float(optax.global_norm(jax.tree.map(jnp.subtract, a, b)))
  bound = config.learning_rate * config.grad_clip_norm / 1e-8  # Adam's eps.
  before, unclipped, _ = one_step[0]()
  for net in gan_objective.NETS:
    assert 0 < norm(new.params[net], state.params[net]) <= 1.01 * bound, net
    assert norm(unclipped.params[net], before.params[net]) > 100 * bound, net


@pytest.mark.parametrize('fields,message', [
    ({'pruning': {'sparsity': 0.5}}, r'^pruning.sparsity=0.5 is not supported by objective=gan'),
    ({'microbatch_size': 16}, r'^microbatch_size=16 is not supported by objective=gan'),
])
def test_options_the_gan_does_not_support_fail_with_one_line(fields, message):
  with pytest.raises(ConfigError, match=message) as error:
    build_experiment(_smoke(**fields), jax.devices()[:1])
  assert '\n' not in str(error.value)


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_is_exact(tmp_path, capsys):
  """Two optimizers, both BN states and the EMA come back exactly: the same log, the same end."""
  overrides = dict(num_train_steps=60, log_every_steps=4, checkpoint_every_steps=15,
                   eval_every_steps=60, quality_metric=False)
  # A mesh of one device in all runs (a faster compile; the same programs, so the same numbers).
  # The killed run is a process of its own, loading this process's compiled programs from the
  # compilation cache; the reference and the resume run here.
  config = gan_config.get_config('smoke')
  config.update(overrides)
  config.mesh.data = overrides['mesh.data'] = 1
  train_and_evaluate(config, tmp_path / 'reference')

  workdir = tmp_path / 'killed'
  run_until_killed([sys.executable, '-m', 'dl10_jax.main', '--config', 'configs/gan.py:smoke',
                    '--workdir', str(workdir)] + [f'--config.{k}={v}' for k, v in overrides.items()],
                   28, this_process_cache_env())
  killed_at = max(metric_events(workdir, 'train_d_loss'))
  assert 15 < killed_at == 28 < 60, 'the run must die between checkpoints for this test to mean much'

  capsys.readouterr()
  train_and_evaluate(config, workdir)
  assert 'Resumed from the checkpoint of step 15' in capsys.readouterr().out
  for key in ('train_d_loss', 'train_g_loss', 'eval_d_fake'):
    assert metric_events(workdir, key) == metric_events(tmp_path / 'reference', key), key
  final = [ocp.StandardCheckpointer().restore(d / 'checkpoints' / '60' / 'state')
           for d in (workdir, tmp_path / 'reference')]
  assert set(final[0]) >= {'params', 'opt_state', 'model_state', 'ema_params', 'rng', 'step'}
  jax.tree.map(np.testing.assert_array_equal, final[0], final[1])
  assert (workdir / 'samples' / 'step_000060.png').is_file()


@pytest.mark.slow
def test_smoke_config_through_main_then_sample(tmp_path, classifier_dir):  # noqa: F811
  workdir = tmp_path / 'gan'
  result = run_main('--config', 'configs/gan.py:smoke', '--workdir', str(workdir),
                    '--config.mesh.data=1',  # One device: faster compiles.
                    f'--config.quality_classifier_dir={classifier_dir}')
  assert result.returncode == 0, result.stderr
  final = [m for m in read_metrics(workdir) if 'eval_classifier_fid' in m][-1]
  assert final['eval_classifier_fid'] > 0 and 0 < final['eval_classifier_confidence'] <= 1
  assert final['eval_class_histogram_ratio'] >= 1
  assert (workdir / 'samples' / 'step_000008.png').is_file()

  out, npz = tmp_path / 'grid.png', tmp_path / 'samples.npz'
  sampled = run_module('dl10_jax.sample', '--workdir', str(workdir), '--num_samples', '20',
                       '--batch_size', '16', '--out', str(out), '--npz', str(npz), '--quality')
  assert sampled.returncode == 0, sampled.stderr
  assert out.is_file() and 'classifier_fid=' in sampled.stdout
  assert 'not Inception-FID' in sampled.stdout
  images = np.load(npz)['images']
  assert images.shape == (20, 28, 28, 1) and images.min() >= -1 and images.max() <= 1

  result = run_module('dl10_jax.sample', '--workdir', str(tmp_path / 'empty'), '--out', str(out))
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'holds no trained run' in lines[0], result.stderr


def test_quality_metric_without_a_classifier_names_the_command(tmp_path):
  config = _smoke(quality_metric=True, quality_classifier_dir=str(tmp_path))
  with pytest.raises(ConfigError, match=r'python -m dl10_jax.train.image_quality --train.*'
                     'quality_metric=False'):
    build_experiment(config, jax.devices()[:1])


def test_cifar10_by_tfds_name_trains_and_a_wrong_image_size_is_one_line():
  """`dataset.name=cifar10` (tfds, mocked: no network): 32x32x3 images through one step."""
  import tensorflow_datasets as tfds
  config = gan_config.get_config('cifar10,smoke')
  with tfds.testing.mock_data(num_examples=64):
    exp = build_experiment(config, jax.devices()[:1])
    batch = exp.example_batch()
    assert batch['image'].shape[1:] == (32, 32, 3)
    state, metrics = exp.train_step(exp.init(jax.random.PRNGKey(0), batch), batch)
    assert np.isfinite(metrics['train_g_loss']) and int(state.step) == 1
    config.model.update(image_size=28, channels=1)
    with pytest.raises(ConfigError, match=r'model.image_size=28, model.channels=1 make 28x28x1 '
                       'images but the data has 32x32x3'):
      build_experiment(config, jax.devices()[:1])


def test_init_from_starts_the_ema_from_the_loaded_generator():
  exp = build_experiment(_smoke(), jax.devices()[:1])
  fresh = exp.init(jax.random.PRNGKey(0), exp.example_batch())
  other = exp.init(jax.random.PRNGKey(1), exp.example_batch())  # Stands in for a trained run.
  state = exp.objective.load_pretrained(fresh, other.params, other.model_state)
  for loaded, ema in zip(jax.tree.leaves(other.params['generator']),
                         jax.tree.leaves(state.ema_params)):
    np.testing.assert_array_equal(ema, loaded)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh.ema_params),
                                                      jax.tree.leaves(other.params['generator'])))
