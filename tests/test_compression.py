"""Compression: gradual magnitude pruning (exact per-kernel sparsity, masks that survive a resume)
and post-training int8 weight quantization (error bound, size, accuracy of a trained CNN)."""

import importlib.util
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, read_metrics
from configs import cnn
from dl10_jax import config_lib
from dl10_jax.errors import ConfigError
from dl10_jax.models import quantization
from dl10_jax.train import pruning
from dl10_jax.train.experiment import restore_run
from dl10_jax.train.trainer import train_and_evaluate


SHAPES = {'conv': (3, 3, 4, 8), 'dense': (64, 32), 'odd': (7, 13), 'bias': (32,)}


def _normal(seed, shapes):
  """numpy draws: compiling jax.random for each shape would take longer than the tests."""
  rng = np.random.default_rng(seed)
  return {name: rng.standard_normal(shape, np.float32) for name, shape in shapes.items()}


def _masks(opt_state):
  return next(s for s in opt_state if isinstance(s, pruning.PruningState)).masks


@pytest.mark.parametrize('target', [0.5, 0.75, 0.9])
def test_pruning_reaches_the_exact_sparsity_and_pruned_weights_stay_zero(target):
  begin, end = 2, 10
  tx = optax.chain(optax.adam(1e-2), pruning.magnitude_pruning(target, begin, end, every_steps=3))
  params = _normal(0, SHAPES)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  pruned_before = {k: np.zeros(p.shape, bool) for k, p in params.items()}
  for t in range(1, 17):  # params after t updates.
    params, opt_state = step(params, opt_state, _normal(t, SHAPES))
    masks = _masks(opt_state)
    for name, p in params.items():
      p = np.asarray(p)
      if name == 'bias':
        assert np.all(masks[name]) and np.all(p != 0)
        continue
      zeros = p == 0
      np.testing.assert_array_equal(zeros, ~np.asarray(masks[name]))  # Pruned <=> exactly 0.
      assert np.all(zeros[pruned_before[name]]), f'a pruned weight of {name} revived at step {t}'
      pruned_before[name] = zeros
      if t < begin + 3:
        assert not zeros.any()
      if t >= end:
        assert zeros.sum() == round(target * p.size), (name, t)
      else:
        assert zeros.sum() <= round(target * p.size)


def test_ties_never_make_the_count_inexact():
  """All magnitudes equal: a threshold alone would prune all or nothing; the rank prunes 90."""
  tx = optax.chain(optax.sgd(0.0), pruning.magnitude_pruning(0.9, 0, 1, every_steps=1))
  params = {'kernel': jnp.ones((10, 10)).at[::2].set(-1.0)}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert int(jnp.sum(optax.apply_updates(params, updates)['kernel'] == 0)) == 90


def test_schedule_is_monotone_zero_before_begin_and_the_target_from_end():
  schedule = pruning.sparsity_schedule(0.8, 10, 50)
  s = np.array([schedule(t) for t in range(70)])
  assert np.all(np.diff(s) >= 0)
  assert np.all(s[:11] == 0)
  np.testing.assert_allclose(s[50:], 0.8, rtol=1e-7)
  assert 0 < s[11] < s[30] < s[49] < s[50]
  assert s[30] > 0.8 * 0.5  # Cubic: fast at first, 87.5 % of the target half-way.


ONE_DEVICE = jax.devices()[:1]  # The replicated masks are recomputed on each device: 8x the sorts.


@pytest.fixture(scope='module')
def pruned_run(tmp_path_factory):
  """8 steps of the CNN smoke config pruned to 75 % by step 6; checkpoints at 4 and 8."""
  config = cnn.get_config('smoke')
  config.update(num_train_steps=8, eval_every_steps=4, checkpoint_every_steps=4)
  config.pruning.update(sparsity=0.75, begin_step=1, end_step=6, every_steps=2)
  workdir = tmp_path_factory.mktemp('pruned')
  train_and_evaluate(config, workdir, devices=ONE_DEVICE)
  return config, workdir


def test_masks_live_in_the_checkpoint_and_a_resumed_run_prunes_the_same(pruned_run, tmp_path):
  config, workdir = pruned_run
  _, reference = restore_run(workdir, ONE_DEVICE)
  for name, p in jax.tree_util.tree_leaves_with_path(reference.params):
    if p.ndim >= 2:  # Each CNN kernel's size is a multiple of 4: exactly 3/4 zeros.
      assert int(jnp.sum(p == 0)) == 3 * p.size // 4, name
  logged = {e['step']: e['sparsity'] for e in read_metrics(workdir) if 'sparsity' in e}
  assert 0 < logged[4] < logged[8] == 0.75

  resumed = tmp_path / 'resumed'
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '8')  # As if killed after the checkpoint of step 4.
  train_and_evaluate(config, resumed, devices=ONE_DEVICE)
  _, state = restore_run(resumed, ONE_DEVICE)
  assert int(state.step) == 8
  jax.tree.map(np.testing.assert_array_equal, state.params, reference.params)
  jax.tree.map(np.testing.assert_array_equal, _masks(state.opt_state), _masks(reference.opt_state))


def test_quantize_error_is_at_most_half_a_step_zeros_stay_and_kernels_shrink_4x():
  w = _normal(0, {'w': (3, 3, 32, 64)})['w'] * np.linspace(0.01, 3.0, 64, dtype=np.float32)
  w[..., 5] = w[0] = 0.0  # An all-zero channel; zeros, as pruning leaves them.
  params = {'conv': {'kernel': w, 'bias': jnp.ones(64)}, 'dense': {'kernel': w.reshape(-1, 64)}}
  qparams = quantization.quantize(params)
  q = qparams['conv']['kernel']
  assert q.values.dtype == jnp.int8 and q.scale.shape == (1, 1, 1, 64)
  assert int(jnp.max(jnp.abs(q.values.astype(jnp.int32)))) == 127
  back = quantization.dequantize(qparams)
  assert back['conv']['bias'] is params['conv']['bias']
  error = jnp.abs(back['conv']['kernel'] - w)
  assert bool(jnp.all(error <= q.scale / 2 * (1 + 1e-6)))
  assert np.all(np.asarray(back['conv']['kernel'])[w == 0] == 0)

  kernels = {k: v['kernel'] for k, v in params.items()}
  ratio = quantization.model_bytes(kernels) / quantization.model_bytes(quantization.quantize(
      kernels))
  assert 3.9 < ratio < 4  # int8 values + one float32 scale per output channel.


def test_int8_eval_of_a_trained_cnn_loses_little_accuracy(pruned_run, tmp_path, capsys):
  _, workdir = pruned_run
  spec = importlib.util.spec_from_file_location('quantize_eval', ROOT / 'scripts/quantize_eval.py')
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  results = script.main(['--workdir', str(workdir), '--json', str(tmp_path / 'out.json')])
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in lines] == ['float32', 'int8']
  assert results['float32']['accuracy'] > 0.3  # Chance is 0.1.
  assert abs(results['int8']['accuracy_drop']) <= 0.02  # 5 of 256 eval images.
  assert results['int8']['loss'] == pytest.approx(results['float32']['loss'], rel=0.05)
  assert results['float32']['bytes'] / results['int8']['bytes'] > 3.9
  assert (tmp_path / 'out.json').exists()


@pytest.mark.parametrize('field,value,message', [
    ('sparsity', 1.0, r'pruning.sparsity=1.0 must be in \[0, 1\)'),
    ('sparsity', -0.5, r'pruning.sparsity=-0.5 must be in \[0, 1\)'),
    ('begin_step', -1, 'pruning.begin_step=-1 must be >= 0'),
    ('begin_step', 80, r'pruning.end_step=80 must be in \(pruning.begin_step=80, '
                       r'num_train_steps=100\]'),
    ('end_step', 101, r'pruning.end_step=101 must be in \(pruning.begin_step=0, '
                      r'num_train_steps=100\]'),
    ('every_steps', 0, 'pruning.every_steps=0 must be > 0'),
])
def test_bad_pruning_values_fail_with_one_line(field, value, message):
  config = cnn.get_config()
  config.num_train_steps = 100
  config.pruning.sparsity = 0.5
  config.pruning[field] = value
  with pytest.raises(ConfigError, match=message) as error:
    config_lib.finalize(config, num_train_examples=60_000, num_data_devices=8)
  assert '\n' not in str(error.value)


def test_end_step_defaults_to_80_percent_and_pruning_off_changes_nothing():
  config = cnn.get_config()
  config.num_train_steps = 100
  assert config_lib.finalize(config, 60_000, 8).pruning.end_step == 80
  del config['pruning']  # A config.json saved before pruning existed still restores.
  assert config_lib.finalize(config, 60_000, 8).pruning.sparsity == 0
