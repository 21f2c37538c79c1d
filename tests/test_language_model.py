"""Language models and sequence classifiers through the shared loop: learning, resume, init_from."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import metric_events, run_main, run_module
from dl10_jax import config_lib
from dl10_jax.errors import ConfigError
from dl10_jax.train import checkpoint
from dl10_jax.train.experiment import restore_run
from dl10_jax.train.language_model import LanguageModel
from dl10_jax.train.trainer import train_and_evaluate
from configs import gpt, lstm, rnn, seq_fmnist


@pytest.mark.parametrize('get_config,arg', [(lstm.get_config, 'smoke'), (rnn.get_config, 'lm,smoke'),
                                            (gpt.get_config, 'smoke')])
def test_language_models_learn_real_text(get_config, arg, tmp_path):
  config = get_config(arg)
  config.num_train_steps = 40
  final = train_and_evaluate(config, tmp_path)
  first_loss = metric_events(tmp_path, 'train_loss')[5]
  assert final['eval_loss'] < first_loss - 0.4, (first_loss, final)
  assert final['eval_bits_per_char'] == pytest.approx(final['eval_loss'] / np.log(2))
  assert final['tokens_per_sec'] > 0 and 0 < final['mfu'] < 1
  assert (tmp_path / 'tokenizer.json').exists()


@pytest.mark.parametrize('arg', ['smoke', 'rnn,smoke'])
def test_recurrent_classifiers_learn_sequential_fashion_mnist(arg, tmp_path):
  final = train_and_evaluate(seq_fmnist.get_config(arg), tmp_path)
  assert final['eval_accuracy'] > 0.35  # 64 steps on 1,024 images; chance is 0.1.


def test_genre_classifier_trains_on_word_tokens(tmp_path):
  final = train_and_evaluate(rnn.get_config('smoke'), tmp_path)
  losses = list(metric_events(tmp_path, 'train_loss').values())
  assert np.isfinite(final['eval_loss']) and 0 <= final['eval_accuracy'] <= 1
  assert losses[-1] < losses[0]


def test_init_from_loads_the_weights_with_a_fresh_optimizer_and_step(tmp_path):
  config = gpt.get_config('smoke')
  config.num_train_steps = 10
  train_and_evaluate(config, tmp_path / 'pretrain')
  _, pretrained = restore_run(tmp_path / 'pretrain', jax.devices()[:1])

  config.update(init_from=str(tmp_path / 'pretrain'), init_reinit='block1/mlp',
                num_train_steps=1, learning_rate=1e-12, schedule='constant', warmup_steps=0,
                grad_clip_norm=0.0)
  train_and_evaluate(config, tmp_path / 'finetune')
  assert 0 in metric_events(tmp_path / 'finetune', 'eval_loss')  # The loaded model, before training.
  _, tuned = restore_run(tmp_path / 'finetune', jax.devices()[:1])
  assert int(tuned.step) == 1  # A fresh step count, and a fresh optimizer:
  assert int(tuned.opt_state[0].count) == 1
  close = lambda a, b: np.allclose(a, b, atol=1e-6)
  assert close(tuned.params['block0']['attn']['qkv']['kernel'],
               pretrained.params['block0']['attn']['qkv']['kernel'])
  assert not close(tuned.params['block1']['mlp']['fc']['kernel'],  # Re-initialised by pattern.
                   pretrained.params['block1']['mlp']['fc']['kernel'])


def test_init_from_a_differently_shaped_run_fails_with_one_line(tmp_path):
  config = gpt.get_config('smoke')
  config.update(num_train_steps=2, warmup_steps=0)
  train_and_evaluate(config, tmp_path / 'small')
  config.update(init_from=str(tmp_path / 'small'))
  config.model.width = 64
  with pytest.raises(ConfigError, match=r'init_from: parameter .* has shape \(.*32.*\) in .* '
                     r'but \(.*64.*\) here'):
    train_and_evaluate(config, tmp_path / 'wide')
  with pytest.raises(ConfigError, match='holds no checkpoint'):
    checkpoint.load_params(tmp_path / 'nowhere', {}, '')


class ScheduledLM(nn.Module):
  """Bigram logits that sow a loss term of step + 1: a model with a schedule (`uses_step`)."""
  uses_step = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False, step: Any = None) -> jax.Array:
    if step is not None:
      self.sow('losses', 'schedule', jnp.asarray(step, jnp.float32) + 1)
    return nn.Embed(8, 8)(tokens)  # [B, T, 8]


def test_the_loss_adds_what_the_model_sows_and_passes_the_step():
  config = config_lib.base_config()
  config.num_train_steps = 10
  objective = LanguageModel(config, ScheduledLM())
  batch = {'tokens': jnp.arange(10).reshape(2, 5) % 8, 'weights': jnp.ones((2, 4))}
  state = objective.init_state(jax.random.PRNGKey(0), batch)
  for step in (0, 4):
    loss, (metrics, _) = objective.loss(state.params, state.replace(step=jnp.asarray(step)), batch,
                                        jax.random.PRNGKey(1))
    assert float(metrics['train_aux_loss']) == step + 1
    assert float(loss) == pytest.approx(float(metrics['train_loss']) + step + 1)


def _sample(*args):
  return run_module('dl10_jax.sample', *args, timeout=180)


@pytest.mark.slow
def test_smoke_configs_through_main_and_sample_with_one_line_errors(tmp_path):
  workdir = tmp_path / 'gpt'
  result = run_main('--config', 'configs/gpt.py:smoke', '--workdir', str(workdir))
  assert result.returncode == 0, result.stderr
  greedy = _sample('--workdir', str(workdir), '--prompt', 'ROMEO:', '--max_new_tokens', '40',
                   '--temperature', '0')
  assert greedy.returncode == 0, greedy.stderr
  assert greedy.stdout.startswith('ROMEO:') and len(greedy.stdout) >= 46
  sampled = _sample('--workdir', str(workdir), '--num_samples', '2', '--top_k', '5',
                    '--top_p', '0.9', '--max_new_tokens', '50')  # Past the 32-token context.
  assert sampled.returncode == 0 and sampled.stdout.count('-' * 40) == 1, sampled.stderr
  for args, message in ((['--prompt', 'caf\u00e9 \u4e00'], 'characters outside the vocabulary'),
                        (['--top_p', '0'], '--top_p=0.0 must be in (0, 1]'),
                        (['--workdir', str(tmp_path / 'empty')], 'holds no trained run')):
    result = _sample('--workdir', str(workdir), *args)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
    assert len(lines) == 1 and message in lines[0], result.stderr
