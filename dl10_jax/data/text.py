"""Text datasets: language modelling windows and passage classification, cached as token arrays.

- `shakespeare_char`: the offline corpus (`shakespeare.py`), split by play; a training example is a
  random window of `block_size + 1` tokens, validation is read as consecutive windows that cover
  the split once (`eval_loss` is over all of it). `genres` / `exclude_plays` select plays.
- `shakespeare_genre`: which of the 6 genres a passage of `passage_lines` dialogue lines is from.
- `text_file`: any local UTF-8 file (`dataset.path`), the first 90 % for training, the rest eval.
- `hf_text`: documents of a local Hugging Face dataset (`hf_text.py`), joined into one text.
- TFDS `tiny_shakespeare` (language modelling) and `imdb_reviews` (classification) by name.

Prepared arrays are cached under `dataset.cache_dir` (default `$DL10_CACHE_DIR` or
`~/.cache/dl10_jax`), keyed by the corpus version, this package's preparation code, the tokenizer
and the dataset fields that shape them, so a second run starts in a fraction of a second.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Callable

import ml_collections
import numpy as np

from dl10_jax import runtime
from dl10_jax.data import hf_text, shakespeare, tokenizer as tokenizer_lib
from dl10_jax.data.sources import ArraySource, Splits
from dl10_jax.errors import ConfigError, DataError, check_choice

LM_DATASETS = ('shakespeare_char', 'text_file', 'hf_text', 'tiny_shakespeare')
CLASSIFICATION_DATASETS = ('shakespeare_genre', 'imdb_reviews')
DATASETS = LM_DATASETS + CLASSIFICATION_DATASETS
_CODE = [pathlib.Path(__file__), pathlib.Path(shakespeare.__file__),
         pathlib.Path(tokenizer_lib.__file__), pathlib.Path(hf_text.__file__)]


# --- Sources. ---

class Windows:
  """Windows of `length` tokens starting every `stride` tokens: {'tokens', 'weights'}.

  With stride 1 (training) every start is an example, so shuffling gives random windows. With
  stride = length - 1 (eval) consecutive windows overlap by one token and their targets cover the
  split exactly once; the last window is padded and its padding has weight 0.
  """

  def __init__(self, tokens: np.ndarray, length: int, stride: int):
    self._tokens, self._length, self._stride = tokens, length, stride
    if stride == 1:
      self._len = len(tokens) - length + 1
    else:
      self._len = -(-(len(tokens) - 1) // stride)  # ceil
    if self._len < 1:
      raise DataError(f'a split of {len(tokens)} tokens is shorter than one window of {length}; '
                      'use a smaller block_size or more text')
    pad = (self._len - 1) * stride + length - len(tokens)
    self._padded = np.concatenate([tokens, np.zeros(max(pad, 0), tokens.dtype)])
    self._valid = len(tokens)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    if not 0 <= i < self._len:
      raise IndexError(i)
    return {k: v[0] for k, v in self.read_batch(np.array([i])).items()}

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    positions = np.asarray(indices)[:, None] * self._stride + np.arange(self._length)
    # Target t of a window is token t + 1: weight 1 where that token is real.
    weights = (positions[:, 1:] < self._valid).astype(np.float32)
    return {'tokens': self._padded[positions], 'weights': weights}


# --- The cache. ---

def _cached(config: ml_collections.ConfigDict, key: dict[str, Any],
            build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """`build()`'s arrays, from the cache if an entry for `key` (+ the code) exists."""
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
  for path in _CODE:
    digest.update(path.read_bytes())
  path = runtime.cache_root(config.get('cache_dir', '')) / f'{key["dataset"]}-{digest.hexdigest()[:16]}.npz'
  try:
    with np.load(path, allow_pickle=False) as f:
      return dict(f)
  except (OSError, ValueError, EOFError):
    pass  # Missing or a broken file: rebuild it.
  arrays = build()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix='.tmp', delete=False) as f:
      np.savez(f, **arrays)
    os.replace(f.name, path)  # Atomic: concurrent runs never read a half-written file.
  except OSError:
    pass  # A read-only cache dir only costs the next run the preparation time.
  return arrays


def _tokenizer(config: ml_collections.ConfigDict, saved: tokenizer_lib.Tokenizer | None,
               train_text: Callable[[], Any]) -> tuple[tokenizer_lib.Tokenizer, str]:
  """The run's saved tokenizer, or one built from the training split (cached); and its JSON."""
  if saved is not None:
    if saved.kind != config.tokenizer:
      raise ConfigError(f'dataset.tokenizer={config.tokenizer!r} but this run was trained with a '
                        f'{saved.kind!r} tokenizer; use a new --workdir')
    return saved, saved.to_json()
  key = {'dataset': config.name, 'corpus': _corpus_key(config), 'tokenizer': config.tokenizer,
         'vocab_size': config.get('vocab_size', 0), 'part': 'tokenizer'}
  arrays = _cached(config, key, lambda: {'json': np.array(tokenizer_lib.build(
      config.tokenizer, train_text(), config.get('vocab_size', 0)).to_json())})
  text = str(arrays['json'])
  return tokenizer_lib.from_json(text), text


def _corpus_key(config: ml_collections.ConfigDict) -> Any:
  if config.name == 'text_file':  # The content itself (hashing is fast; tokenizing is not).
    return hashlib.sha256(_read_text_file(config.path).encode()).hexdigest()
  if config.name == 'hf_text':
    return hf_text.corpus_key(config)
  if config.name.startswith('shakespeare'):
    return shakespeare.corpus_version()
  return f'tfds:{config.name}:{config.get("data_dir", "")}'


# --- Language modelling. ---

def _read_text_file(path: str) -> str:
  if not path:
    raise ConfigError('dataset.path is empty; text_file needs the path of a UTF-8 text file')
  try:
    text = pathlib.Path(path).read_text(encoding='utf-8')
  except FileNotFoundError:
    raise DataError(f'text file {path} does not exist; set dataset.path to a UTF-8 text file')
  except UnicodeDecodeError as e:
    raise DataError(f'text file {path} is not UTF-8 (byte {e.start}: {e.reason}); convert it, '
                    'e.g. `iconv -f latin1 -t utf-8`') from None
  except OSError as e:
    raise DataError(f'cannot read text file {path}: {e.strerror or e}') from None
  if not text.strip():
    raise DataError(f'text file {path} is empty; set dataset.path to a file with text')
  return text


def _tfds_text(config: ml_collections.ConfigDict, split: str) -> list[dict[str, Any]]:
  import tensorflow_datasets as tfds  # Slow import; only when a TFDS dataset is asked for.
  try:
    source = tfds.data_source(config.name, split=split, data_dir=config.get('data_dir') or None,
                              download=False)
  except Exception as e:  # Not prepared: the TFDS error kind depends on the version.
    raise DataError(f'TFDS dataset {config.name!r} is not prepared: prepare it once with internet '
                    f'access (`tfds build {config.name}`), or use the offline shakespeare_char '
                    f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') from None
  decode = lambda t: t.decode('utf-8') if isinstance(t, bytes) else str(t)
  return [{k: decode(v) if k == 'text' else v for k, v in source[i].items()}
          for i in range(len(source))]


def _names(field: str, value: str, allowed: tuple[str, ...]) -> list[str]:
  names = [n.strip() for n in value.split(',') if n.strip()]
  unknown = sorted(set(names) - set(allowed))
  if unknown:
    raise ConfigError(f'dataset.{field} has {unknown[0]!r}; allowed (comma-separated): '
                      f'{", ".join(allowed)}')
  return names


def _shakespeare_split(config: ml_collections.ConfigDict) -> tuple[list, list]:
  """(train plays, validation plays) of `shakespeare_char`.

  All genres: every 10th play is validation (shakespeare.lm_split). With `genres`, validation is
  each chosen genre's held-out play of the genre task (shakespeare.GENRE_EVAL_PLAYS), training the
  genre's other plays. `exclude_plays` are left out of training (e.g. a later fine-tuning run's
  validation play, so that pre-training never sees it).
  """
  plays = shakespeare.load_plays()
  excluded = _names('exclude_plays', config.get('exclude_plays', ''), tuple(p.name for p in plays))
  genres = _names('genres', config.get('genres', ''), shakespeare.GENRES)
  if genres:
    chosen = [p for p in plays if p.genre in genres]
    train = [p for p in chosen if p.name not in shakespeare.GENRE_EVAL_PLAYS]
    valid = [p for p in chosen if p.name in shakespeare.GENRE_EVAL_PLAYS]
  else:
    train, valid = shakespeare.lm_split(plays)
  return [p for p in train if p.name not in excluded], valid


def _lm_texts(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(train text, eval text) of a language-modelling dataset."""
  if config.name == 'shakespeare_char':
    train, valid = _shakespeare_split(config)
    return '\n'.join(p.text for p in train), '\n'.join(p.text for p in valid)
  if config.name == 'text_file':
    text = _read_text_file(config.path)
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]
  if config.name == 'hf_text':
    return hf_text.texts(config)
  texts = {s: '\n'.join(r['text'] for r in _tfds_text(config, s)) for s in ('train', 'validation')}
  return texts['train'], texts['validation']


def encode(tokenizer: tokenizer_lib.Tokenizer, text: str, piece: int = 1 << 24) -> np.ndarray:
  """`tokenizer.encode(text)`, a line-aligned piece of about `piece` characters at a time: the
  same ids (no tokenizer merges across a line end), while the tokenizer's working arrays (the
  char tokenizer's int64 ones, many times the text) stay those of one piece on a large corpus."""
  ids, start = [], 0
  while start < len(text):
    end = text.find('\n', start + piece) + 1 or len(text)
    ids.append(tokenizer.encode(text[start:end]))
    start = end
  return np.concatenate(ids) if ids else np.zeros(0, np.int32)


def _language_model(config: ml_collections.ConfigDict,
                    saved: tokenizer_lib.Tokenizer | None) -> Splits:
  texts = functools.cache(lambda: _lm_texts(config))  # Read only if something is not cached.
  tokenizer, tokenizer_json = _tokenizer(config, saved, lambda: texts()[0])

  def build() -> dict[str, np.ndarray]:
    train, valid = texts()
    return {'train': encode(tokenizer, train), 'eval': encode(tokenizer, valid),
            'eval_chars': np.array(len(valid))}

  key = {'dataset': config.name, 'corpus': _corpus_key(config), 'genres': config.get('genres', ''),
         'exclude_plays': config.get('exclude_plays', ''), 'tokenizer': tokenizer_json,
         'part': 'tokens'}
  arrays = _cached(config, key, build)
  if config.block_size < 1:
    raise ConfigError(f'dataset.block_size={config.block_size} must be >= 1')
  length = config.block_size + 1
  return Splits(Windows(arrays['train'], length, 1), Windows(arrays['eval'], length, length - 1),
                num_classes=None, input_key='tokens', tokenizer=tokenizer,
                chars_per_token=float(arrays['eval_chars']) / len(arrays['eval']))


# --- Passage classification. ---

def _genre_passages(config: ml_collections.ConfigDict) -> tuple[list, list]:
  """([(passage, label)] train, eval): `passage_lines` consecutive dialogue lines per passage."""
  lines_per = config.passage_lines
  if lines_per < 1:
    raise ConfigError(f'dataset.passage_lines={lines_per} must be >= 1')
  train, valid = shakespeare.genre_split(shakespeare.load_plays())

  def passages(plays, stride):
    out = []
    for play in plays:
      lines = play.dialogue_lines()
      for start in range(0, len(lines) - lines_per + 1, stride):
        out.append(('\n'.join(lines[start:start + lines_per]),
                    shakespeare.GENRES.index(play.genre)))
    return out

  return passages(train, config.passage_stride), passages(valid, lines_per)


def _classification(config: ml_collections.ConfigDict,
                    saved: tokenizer_lib.Tokenizer | None) -> Splits:
  if config.name == 'shakespeare_genre':
    labelled = _genre_passages(config)
    num_classes = len(shakespeare.GENRES)
  else:  # imdb_reviews
    labelled = tuple([(r['text'], int(r['label'])) for r in _tfds_text(config, s)]
                     for s in ('train', 'test'))
    num_classes = 2
  tokenizer, tokenizer_json = _tokenizer(config, saved, lambda: [t for t, _ in labelled[0]])

  def encode(examples):
    # A fixed shuffle, so that the first N records (num_*_examples) span every genre.
    examples = [examples[i] for i in np.random.default_rng(0).permutation(len(examples))]
    tokens = np.zeros((len(examples), config.max_len), np.int32)  # 0 pads.
    for i, (text, _) in enumerate(examples):
      ids = tokenizer.encode(text)[:config.max_len]
      tokens[i, :len(ids)] = ids
    return tokens, np.array([label for _, label in examples], np.int32)

  def build():
    (train_x, train_y), (eval_x, eval_y) = encode(labelled[0]), encode(labelled[1])
    return {'train_tokens': train_x, 'train_label': train_y,
            'eval_tokens': eval_x, 'eval_label': eval_y}

  key = {'dataset': config.name, 'corpus': _corpus_key(config), 'tokenizer': tokenizer_json,
         'max_len': config.max_len, 'passage_lines': config.get('passage_lines', 0),
         'passage_stride': config.get('passage_stride', 0), 'part': 'tokens'}
  arrays = _cached(config, key, build)
  return Splits(ArraySource({'tokens': arrays['train_tokens'], 'label': arrays['train_label']}),
                ArraySource({'tokens': arrays['eval_tokens'], 'label': arrays['eval_label']}),
                num_classes=num_classes, input_key='tokens', tokenizer=tokenizer)


def load(config: ml_collections.ConfigDict,
         saved_tokenizer: tokenizer_lib.Tokenizer | None = None) -> Splits:
  """The text dataset `config.name`, tokenized by `saved_tokenizer` if the run has one."""
  check_choice('dataset.tokenizer', config.get('tokenizer', ''), tokenizer_lib.KINDS)
  if config.name in LM_DATASETS:
    return _language_model(config, saved_tokenizer)
  return _classification(config, saved_tokenizer)
