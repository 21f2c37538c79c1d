"""The shared training loop on real data: learning, data parallelism, resume, divergence."""

import json
import math
import sys

import jax
import numpy as np
import pytest

from configs import cnn, gpt
from conftest import metric_events, read_metrics, run_until_killed, this_process_cache_env
from dl10_jax import data
from dl10_jax.errors import ConfigError, TrainingDiverged
from dl10_jax.train import sharding
from dl10_jax.train.experiment import restore_run
from dl10_jax.train.trainer import train_and_evaluate


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.slow
def test_loss_falls_and_accuracy_beats_chance(cnn_smoke_config, tmp_path, dtype):
  cnn_smoke_config.dtype = dtype
  final = train_and_evaluate(cnn_smoke_config, tmp_path)
  losses = list(metric_events(tmp_path, 'train_loss').values())
  assert losses[-1] < 0.6 * losses[0], losses
  assert final['eval_accuracy'] > 0.5  # 16 steps on 512 Fashion-MNIST images; chance is 0.1.
  assert final['eval_loss'] < losses[0]


@pytest.mark.slow
def test_eight_devices_match_one(cnn_smoke_config, tmp_path):
  cnn_smoke_config.num_train_steps = 6
  cnn_smoke_config.log_every_steps = 1
  one = train_and_evaluate(cnn_smoke_config, tmp_path / 'one', devices=jax.devices()[:1])
  eight = train_and_evaluate(cnn_smoke_config, tmp_path / 'eight')
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(list(metric_events(tmp_path / 'eight', 'train_loss').values()),
                             list(metric_events(tmp_path / 'one', 'train_loss').values()),
                             rtol=2e-5)
  assert one['eval_accuracy'] == pytest.approx(eight['eval_accuracy'], abs=1 / 256)
  assert one['eval_loss'] == pytest.approx(eight['eval_loss'], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('config_module,overrides,kill_at', [
    (cnn, dict(num_train_steps=20, log_every_steps=3, checkpoint_every_steps=5,
               eval_every_steps=10), 9),
    (gpt, dict(num_train_steps=24, log_every_steps=5, checkpoint_every_steps=6,
               eval_every_steps=12), 10),
], ids=['cnn', 'gpt'])
def test_sigkill_between_checkpoints_then_resume_reproduces_the_run(config_module, overrides,
                                                                    kill_at, tmp_path, capsys):
  # Logs out of step with the checkpoints: the resumed log must still match. The killed run is a
  # process of its own (8 devices, as here) that loads this process's compiled steps from the
  # compilation cache; the reference and the resume run here.
  eval_key = 'eval_accuracy' if config_module is cnn else 'eval_loss'
  config = config_module.get_config('smoke')
  config.update(overrides)
  train_and_evaluate(config, tmp_path / 'reference')
  reference = metric_events(tmp_path / 'reference', 'train_loss')

  workdir = tmp_path / 'killed'
  run_until_killed([sys.executable, '-m', 'dl10_jax.main', '--config',
                    f'configs/{config_module.__name__.split(".")[-1]}.py:smoke', '--workdir',
                    str(workdir)] + [f'--config.{k}={v}' for k, v in overrides.items()],
                   kill_at, this_process_cache_env())
  first_save = overrides['checkpoint_every_steps']
  killed_at = max(metric_events(workdir, 'train_loss'))
  assert first_save < killed_at == kill_at < overrides['num_train_steps'], \
      'the run must die between checkpoints for this test to mean much'
  assert killed_at % first_save, 'killed_at must not be a checkpoint step'

  capsys.readouterr()
  train_and_evaluate(config, workdir)
  assert f'Resumed from the checkpoint of step {kill_at // first_save * first_save}' in \
      capsys.readouterr().out
  resumed = metric_events(workdir, 'train_loss')
  assert resumed == reference  # Exactly, step for step, on CPU.
  assert metric_events(workdir, eval_key) == metric_events(tmp_path / 'reference', eval_key)
  kept = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  n = overrides['num_train_steps']
  assert kept == [n - 2 * first_save, n - first_save, n]  # keep_checkpoints=3.


def test_nan_loss_stops_the_run_naming_the_step(cnn_smoke_config, tmp_path):
  cnn_smoke_config.learning_rate = 1e30
  cnn_smoke_config.log_every_steps = 1
  with pytest.raises(TrainingDiverged, match=r'train_loss became nan at step \d+'):
    train_and_evaluate(cnn_smoke_config, tmp_path)


def test_a_run_saved_before_a_new_shared_field_still_restores(cnn_smoke_config, tmp_path):
  cnn_smoke_config.num_train_steps = 2
  train_and_evaluate(cnn_smoke_config, tmp_path)
  config_path = tmp_path / 'config.json'
  saved = json.loads(config_path.read_text())
  del saved['adam_b2']  # As in a run saved before the field existed.
  config_path.write_text(json.dumps(saved))
  exp, state = restore_run(tmp_path, jax.devices()[:1])
  assert exp.config.adam_b2 == 0.999 and int(state.step) == 2


@pytest.mark.slow
def test_rerun_of_a_finished_run_only_evaluates(cnn_smoke_config, tmp_path):
  cnn_smoke_config.num_train_steps = 4
  first = train_and_evaluate(cnn_smoke_config, tmp_path)
  again = train_and_evaluate(cnn_smoke_config, tmp_path)
  assert again == {k: first[k] for k in ('eval_loss', 'eval_accuracy')}


def test_resuming_with_an_incompatible_model_fails_clearly(cnn_smoke_config, tmp_path):
  cnn_smoke_config.num_train_steps = 2
  train_and_evaluate(cnn_smoke_config, tmp_path)
  cnn_smoke_config.model.dense_features = 32
  with pytest.raises(ConfigError, match='checkpoint of step 2 .* does not fit this config'):
    train_and_evaluate(cnn_smoke_config, tmp_path)


@pytest.mark.slow
def test_tfds_dataset_by_name_trains_end_to_end(cnn_smoke_config, tmp_path):
  """`dataset.name=mnist` without IDX files goes through tfds.data_source (mocked: no network)."""
  import tensorflow_datasets as tfds
  cnn_smoke_config.dataset.update(name='mnist', source='auto', num_train_examples=-1,
                                  num_eval_examples=-1)
  cnn_smoke_config.num_train_steps = 3
  with tfds.testing.mock_data(num_examples=64):
    final = train_and_evaluate(cnn_smoke_config, tmp_path)
  # Once per 2-step epoch, and at the end.
  assert set(metric_events(tmp_path, 'eval_accuracy')) == {2, 3}
  assert 0.0 <= final['eval_accuracy'] <= 1.0 and math.isfinite(final['eval_loss'])


@pytest.mark.slow
def test_resuming_into_another_data_stream_fails_clearly(cnn_smoke_config, tmp_path):
  cnn_smoke_config.num_train_steps = 2
  train_and_evaluate(cnn_smoke_config, tmp_path)
  cnn_smoke_config.batch_size = 16
  with pytest.raises(ConfigError, match='another data stream .*batch_size 32 there, 16 here'):
    train_and_evaluate(cnn_smoke_config, tmp_path)


def test_microbatched_update_equals_the_whole_batch_update(cnn_smoke_config):
  """Gradient accumulation over chunks of 8 gives the update of the 32-example batch."""
  from dl10_jax.train.experiment import build_experiment
  cnn_smoke_config.update(optimizer='sgd', momentum=0.0, learning_rate=1.0)  # params -= grads.
  states = {}
  for size in (0, 8):
    cnn_smoke_config.microbatch_size = size
    exp = build_experiment(cnn_smoke_config)
    batch = exp.example_batch()
    state = exp.init(jax.random.PRNGKey(0), batch)
    with jax.default_matmul_precision('highest'):
      states[size], metrics = exp.train_step(state, batch)
    states[size] = (states[size].params, float(metrics['train_loss']))
  assert states[8][1] == pytest.approx(states[0][1], rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               states[8][0], states[0][0])


def test_microbatched_eval_equals_the_whole_batch_eval(cnn_smoke_config):
  """Eval sums over chunks of 8 add up to the 128-example batch's."""
  from dl10_jax.train.experiment import build_experiment
  sums = {}
  for size in (0, 8):
    cnn_smoke_config.microbatch_size = size
    exp = build_experiment(cnn_smoke_config)
    state = exp.init(jax.random.PRNGKey(0), exp.example_batch())
    batch = next(data.eval_batches(exp.splits.eval, 128))
    with jax.default_matmul_precision('highest'):
      sums[size] = jax.device_get(exp.eval_step(state, sharding.to_global(batch, exp.mesh)))
  assert sums[8]['count'] == sums[0]['count'] == 128
  assert sums[8]['correct'] == sums[0]['correct']
  assert sums[8]['loss'] == pytest.approx(sums[0]['loss'], rel=1e-5)


@pytest.mark.parametrize('append', [True, False])  # False: how object stores (gs://) are written.
def test_metric_log_survives_a_new_writer(tmp_path, append):
  from dl10_jax.train.writer import MetricWriter
  for step in (1, 2):  # A resumed run opens a new writer on the same log.
    writer = MetricWriter(tmp_path, append=append)
    writer.write(step, {'train_loss': np.float32(1.0 / step)})
    if not append:  # Rewritten at each event: complete without a close.
      assert len(read_metrics(tmp_path)) == step
    writer.close()
  assert read_metrics(tmp_path) == [{'step': 1, 'train_loss': 1.0}, {'step': 2, 'train_loss': 0.5}]
