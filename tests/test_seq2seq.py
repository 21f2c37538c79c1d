"""Algorithmic translation data (correct, deterministic, resumable) and the seq2seq objective."""

import jax
import numpy as np
import pytest

from conftest import read_metrics, run_module
from configs import seq2seq as seq2seq_config
from dl10_jax import data
from dl10_jax.data import algorithmic
from dl10_jax.errors import ConfigError
from dl10_jax.train.experiment import build_experiment
from dl10_jax.train.trainer import train_and_evaluate


def _text(ids):
  """Token ids -> '123+45' (up to EOS)."""
  out = []
  for i in ids:
    if i in (algorithmic.EOS, algorithmic.PAD):
      break
    out.append('+' if i == algorithmic.PLUS else str(i - algorithmic.DIGIT0))
  return ''.join(out)


def _dataset(variant, **fields):
  config = seq2seq_config.get_config(variant).dataset
  config.update(fields)
  return config


@pytest.mark.parametrize('task', algorithmic.TASKS)
def test_records_solve_the_task_and_padding_follows_eos(task):
  splits = data.load(_dataset(task))
  for i in range(40):
    record = splits.train[i]
    source, target = _text(record['source']), _text(record['target'])
    if task == 'reverse':
      assert target == source[::-1]
    elif task == 'sort':
      assert target == ''.join(sorted(source))
    else:  # configs/seq2seq.py:add writes numbers least-significant digit first.
      a, b = (n[::-1] for n in source.split('+'))
      assert int(target[::-1]) == int(a) + int(b)
      assert (a[0] != '0' or len(a) == 1) and (b[0] != '0' or len(b) == 1)
    eos = int(np.flatnonzero(record['target'] == algorithmic.EOS)[0])
    assert np.all(record['target'][eos + 1:] == 0) and algorithmic.BOS not in record['source']


def test_digit_order_writes_the_same_sums_backwards():
  msd = data.load(_dataset('add', digit_order='msd')).train
  lsd = data.load(_dataset('add', digit_order='lsd')).train
  for i in range(20):
    a, b = _text(msd[i]['source']).split('+')
    assert int(_text(msd[i]['target'])) == int(a) + int(b)
    assert _text(lsd[i]['source']) == a[::-1] + '+' + b[::-1]
    assert _text(lsd[i]['target']) == _text(msd[i]['target'])[::-1]
  with pytest.raises(ConfigError, match="digit_order='backwards'.*allowed: msd, lsd"):
    data.load(_dataset('add', digit_order='backwards'))


def test_eval_groups_interleave_and_have_their_lengths():
  splits = data.load(_dataset('reverse', max_len=6, eval_lengths=(9, 12), eval_size=4))
  assert splits.eval_groups == ('train_lengths', 'len9', 'len12') and len(splits.eval) == 12
  lengths = {0: set(), 1: set(), 2: set()}
  for i in range(len(splits.eval)):
    record = splits.eval[i]
    assert record['group'] == i % 3 and record['source'].shape == (12,)
    lengths[int(record['group'])].add(len(_text(record['source'])))
  assert max(lengths[0]) <= 6 and lengths[1] == {9} and lengths[2] == {12}
  assert splits.train[0]['source'].shape == (6,)  # Training records: padded to max_len only.


def test_records_are_a_function_of_seed_split_and_index():
  a, b = data.load(_dataset('add')), data.load(_dataset('add'))
  np.testing.assert_array_equal(a.train[123]['source'], b.train[123]['source'])
  assert not np.array_equal(a.train[123]['source'], a.train[124]['source'])
  other = data.load(_dataset('add', seed=1))
  assert not np.array_equal(a.train[123]['source'], other.train[123]['source'])


def test_the_training_stream_resumes_exactly_from_a_saved_position():
  splits = data.load(_dataset('sort', train_size=64))
  it = data.train_iterator(splits.train, 8, seed=0, prefetch=1)
  for _ in range(3):
    next(it)
  saved = it.get_state()
  want = [next(it)['source'] for _ in range(10)]  # Crosses an epoch boundary.
  resumed = data.train_iterator(splits.train, 8, seed=0, prefetch=1)
  resumed.set_state(saved)
  for expected in want:
    np.testing.assert_array_equal(next(resumed)['source'], expected)


def test_bad_dataset_fields_fail_clearly():
  with pytest.raises(ConfigError, match="dataset.task='copy' is not supported; allowed: reverse"):
    data.load(_dataset('reverse', task='copy'))
  with pytest.raises(ConfigError, match='dataset.min_len=5 and dataset.max_len=3'):
    data.load(_dataset('reverse', min_len=5, max_len=3))


@pytest.mark.slow
def test_seq2seq_metrics_per_group_and_a_short_run_learns(tmp_path):
  config = seq2seq_config.get_config('smoke')
  final = train_and_evaluate(config, tmp_path)
  for name in ('eval_loss', 'eval_exact_match', 'eval_token_accuracy', 'eval_exact_match_len9',
               'eval_exact_match_len12', 'eval_loss_len12'):
    assert np.isfinite(final[name]), name
  assert 0 <= final['eval_exact_match'] <= 1
  events = read_metrics(tmp_path)
  losses = [e['train_loss'] for e in events if 'train_loss' in e]
  assert losses[-1] < losses[0]


def test_exact_match_is_one_for_a_model_that_copies_the_target():
  """Exact match counts whole decoded sequences: check the objective's sums on perfect outputs."""
  config = seq2seq_config.get_config('smoke')
  exp = build_experiment(config)
  objective = exp.objective
  batch = exp.example_batch()
  target = np.asarray(batch['target'])
  objective.decode = lambda variables, source, max_len: target  # A perfect decoder.
  state = exp.init(jax.random.PRNGKey(0), batch)
  sums = {k: float(v) for k, v in objective.eval_step(state, batch).items()}
  metrics = objective.summarize_eval(sums)
  assert metrics['eval_exact_match'] == 1.0 and metrics['eval_exact_match_len12'] == 1.0


@pytest.mark.slow
def test_seq2seq_smoke_config_runs_from_the_command_line(tmp_path):
  result = run_module('dl10_jax.main', '--config', 'configs/seq2seq.py:add,rotary,smoke',
                      '--workdir', str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert any('eval_exact_match' in e and 'eval_loss' in e for e in read_metrics(tmp_path))


def test_a_config_with_two_tasks_fails_clearly():
  with pytest.raises(ValueError, match='choose one task'):
    seq2seq_config.get_config('reverse,add')
