"""hf_text: a local Hugging Face dataset (save_to_disk, parquet, JSON lines) as language-model text,
read offline; the datasets the tests read are written by the tests."""

import os
import pathlib
import socket
import sys

import numpy as np
import pytest

from conftest import read_metrics, run_main
from dl10_jax import data
from dl10_jax.config_lib import hf_text_dataset
from dl10_jax.errors import ConfigError, DataError

NAMES = ('Tim', 'Lily', 'Max', 'Sue', 'Ben')
THINGS = ('ball', 'cat', 'boat', 'kite', 'cake', 'tree')


def _stories(n: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  return [f'{NAMES[rng.integers(5)]} saw a {THINGS[rng.integers(6)]}. It was '
          f'{"big" if rng.random() < 0.5 else "red"} and {NAMES[rng.integers(5)]} smiled.'
          for _ in range(n)]


DOCS = {'train': _stories(300, 0), 'validation': _stories(40, 1)}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Any connection attempt fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError('hf_text tried to use the network')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket.socket, 'connect_ex', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')


@pytest.fixture(scope='module')
def written(tmp_path_factory) -> dict[str, pathlib.Path]:
  """The same train / validation documents as a save_to_disk directory, parquet and JSON lines."""
  os.environ.setdefault('HF_HUB_OFFLINE', '1')  # Before the library's first import reads it.
  import datasets
  datasets.disable_progress_bars()
  root = tmp_path_factory.mktemp('hf')
  splits = datasets.DatasetDict({
      split: datasets.Dataset.from_dict({'id': list(range(len(docs))), 'text': docs})
      for split, docs in DOCS.items()})
  splits.save_to_disk(str(root / 'arrow'))
  for split, ds in splits.items():
    ds.to_parquet(str(root / 'parquet' / f'{split}.parquet'))
    ds.to_json(str(root / 'jsonl' / f'{split}.jsonl'), lines=True)
  return {k: root / k for k in ('arrow', 'parquet', 'jsonl')}


def _config(path: pathlib.Path | str, cache: pathlib.Path, **fields):
  config = hf_text_dataset()
  config.update(path=str(path), cache_dir=str(cache), block_size=16, **fields)
  return config


def test_every_format_gives_the_same_token_stream(written, tmp_path, monkeypatch):
  loaded = {k: data.load(_config(p, tmp_path / k)) for k, p in written.items()}
  first = loaded['arrow']
  assert first.input_key == 'tokens' and first.tokenizer.kind == 'char'
  assert first.tokenizer.decode(first.eval._tokens) == '\n\n'.join(DOCS['validation'])
  assert first.tokenizer.decode(first.train._tokens) == '\n\n'.join(DOCS['train'])
  for splits in loaded.values():
    assert splits.tokenizer == first.tokenizer
    np.testing.assert_array_equal(splits.train._tokens, first.train._tokens)
    np.testing.assert_array_equal(splits.eval._tokens, first.eval._tokens)
  monkeypatch.setitem(sys.modules, 'datasets', None)  # A cached dataset needs no `datasets`.
  again = data.load(_config(written['arrow'], tmp_path / 'arrow'))
  np.testing.assert_array_equal(again.train._tokens, first.train._tokens)


def test_data_files_hold_out_documents_and_limits_apply(written, tmp_path):
  config = _config(written['jsonl'] / 'train.jsonl', tmp_path, eval_split='', eval_holdout=30.0,
                   separator='\\n')
  splits = data.load(config)
  assert splits.tokenizer.decode(splits.eval._tokens) == '\n'.join(DOCS['train'][-30:])
  assert splits.tokenizer.decode(splits.train._tokens) == '\n'.join(DOCS['train'][:-30])
  config = _config(str(written['parquet'] / '*.parquet'), tmp_path, eval_split='',
                   eval_holdout=0.1, max_documents=100)  # One split: both files, train first.
  splits = data.load(config)
  assert splits.tokenizer.decode(splits.eval._tokens) == '\n\n'.join(DOCS['train'][90:100])
  config = _config(written['arrow'], tmp_path, max_chars=500)
  splits = data.load(config)
  for split, docs in ((splits.train, DOCS['train']), (splits.eval, DOCS['validation'])):
    text = splits.tokenizer.decode(split._tokens)
    assert len(text.replace('\n\n', '')) == 500 and '\n\n'.join(docs).startswith(text)


def test_bpe_tokenizer_is_fit_on_the_training_split(written, tmp_path):
  splits = data.load(_config(written['parquet'], tmp_path, tokenizer='bpe', vocab_size=300))
  assert splits.tokenizer.kind == 'bpe' and splits.tokenizer.vocab_size <= 300
  assert splits.tokenizer.decode(splits.eval._tokens) == '\n\n'.join(DOCS['validation'])
  assert len(splits.eval._tokens) < len('\n\n'.join(DOCS['validation'])) / 2


def _one_line_error(kind, config, match):
  with pytest.raises(kind, match=match) as info:
    data.load(config)
  assert '\n' not in str(info.value)


def test_errors_are_one_clear_line(written, tmp_path, monkeypatch):
  _one_line_error(ConfigError, _config('', tmp_path), 'dataset.path is empty')
  _one_line_error(DataError, _config(tmp_path / 'nowhere', tmp_path), 'nowhere.* does not exist')
  _one_line_error(DataError, _config(written['arrow'], tmp_path, eval_split='test'),
                  "eval_split='test' is not a split .*available: train, validation")
  _one_line_error(DataError, _config(written['jsonl'], tmp_path, text_field='story'),
                  "text_field='story' is not a column .*columns: id, text")
  _one_line_error(DataError, _config(written['parquet'], tmp_path, text_field='id'),
                  "text_field='id' .* holds int64, not strings")
  (tmp_path / 'notes.txt').write_text('hello')
  _one_line_error(ConfigError, _config(tmp_path / 'notes.txt', tmp_path),
                  'must name files of one format; allowed: .parquet')
  monkeypatch.setitem(sys.modules, 'datasets', None)  # As if not installed.
  _one_line_error(DataError, _config(written['arrow'], tmp_path / 'fresh'),
                  r'needs the Python package datasets: pip install datasets==5\.2\.0')


@pytest.mark.slow
def test_gpt_trains_on_a_local_dataset(written, tmp_path):
  workdir = tmp_path / 'run'
  result = run_main('--config', 'configs/gpt.py:hf_text,smoke', f'--workdir={workdir}',
                    f'--config.dataset.path={written["arrow"]}',
                    f'--config.dataset.cache_dir={tmp_path / "cache"}',
                    '--config.num_train_steps=4', '--config.warmup_steps=2',
                    '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4')
  assert result.returncode == 0, result.stderr[-3000:]
  evals = [e for e in read_metrics(workdir) if 'eval_loss' in e]
  assert evals and evals[-1]['step'] == 4 and np.isfinite(evals[-1]['eval_loss'])
  assert '"kind": "char"' in (workdir / 'tokenizer.json').read_text()
