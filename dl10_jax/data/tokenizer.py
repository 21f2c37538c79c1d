"""Tokenizers for the text datasets: characters, bytes, byte-level BPE, and words.

Each one is saved with its run (`WORKDIR/tokenizer.json`) and restored from there, so resuming and
sampling use exactly the tokenizer that training used, even if the corpus or the code changes.

- `char`: the characters of the training split, sorted; id 0 stands for any other character.
- `byte`: UTF-8 bytes, vocabulary 256, nothing to build.
- `bpe`: byte-level BPE trained on the training split by the `tokenizers` library.
- `gpt2`: GPT-2's byte-level BPE, read from a Hugging Face checkpoint (`init_from=hf:PATH`), which
  encodes exactly as Hugging Face's GPT-2 tokenizer does.
- `word`: lower-cased words and punctuation (classification); id 0 pads, id 1 is unknown.
"""

from __future__ import annotations

import abc
import collections
import json
import os
import pathlib
import re
from typing import Iterable

import numpy as np

from dl10_jax.errors import ConfigError, DataError, check_choice, describe

KINDS = ('char', 'byte', 'bpe', 'gpt2', 'word')
_UNKNOWN_CHAR = '\ufffd'  # What id 0 of the char tokenizer decodes to.
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*|[^\sa-z]")
# Where GPT-2's pre-tokenizer always splits, whatever follows: before a newline that comes after
# non-whitespace (the piece ending there is no whitespace run, the only one whose end depends on
# the next character), so the pieces encode to the ids of the whole text.
_GPT2_PIECES = re.compile(r'(?<=\S)(?=\n)')
GPT2_EOS = '<|endoftext|>'  # GPT-2's one special token (its bos, eos and unk).


class Tokenizer(abc.ABC):
  """Text <-> int32 ids."""
  kind: str
  vocab_size: int

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """int32[N] ids."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; decode(encode(t)) == t for text the tokenizer can represent."""

  def unknown(self, text: str) -> list[str]:
    """The characters of `text` this tokenizer cannot represent (empty for byte-level ones)."""
    return []

  def to_json(self) -> str:
    return json.dumps({'kind': self.kind, **self._state()}, ensure_ascii=False)

  @abc.abstractmethod
  def _state(self) -> dict:
    """What `from_json` needs to rebuild this tokenizer."""

  def __eq__(self, other) -> bool:
    return isinstance(other, Tokenizer) and self.to_json() == other.to_json()


class CharTokenizer(Tokenizer):
  kind = 'char'

  def __init__(self, chars: str):
    self.chars = ''.join(sorted(set(chars)))
    self.vocab_size = len(self.chars) + 1  # + the unknown id 0.
    self._codes = np.array([ord(c) for c in self.chars], np.int64)

  @classmethod
  def build(cls, text: str) -> 'CharTokenizer':
    return cls(''.join(set(text)))

  def encode(self, text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode('utf-32-le'), np.uint32).astype(np.int64)
    pos = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
    return np.where(self._codes[pos] == codes, pos + 1, 0).astype(np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return ''.join(self.chars[i - 1] if 0 < i <= len(self.chars) else _UNKNOWN_CHAR
                   for i in np.asarray(ids).tolist())

  def unknown(self, text: str) -> list[str]:
    return sorted(set(text) - set(self.chars))

  def _state(self) -> dict:
    return {'chars': self.chars}


class ByteTokenizer(Tokenizer):
  kind = 'byte'
  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return bytes(np.asarray(ids, np.uint8).tolist()).decode('utf-8', errors='replace')

  def _state(self) -> dict:
    return {}


class BpeTokenizer(Tokenizer):
  """Byte-level BPE (GPT-2 style) from the `tokenizers` library."""
  kind = 'bpe'

  def __init__(self, hf_json: str):
    import tokenizers
    self._hf = tokenizers.Tokenizer.from_str(hf_json)
    self._json = hf_json
    self.vocab_size = self._hf.get_vocab_size()
    self.eos_id = self._hf.token_to_id(GPT2_EOS)  # GPT-2's end of text, where it is a token.

  @classmethod
  def build(cls, text: str, vocab_size: int,
            special_tokens: tuple[str, ...] = ()) -> 'BpeTokenizer':
    """Trained on `text`; `special_tokens` (e.g. GPT-2's end of text) take the first ids."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = text.splitlines(keepends=True)
    hf.train_from_iterator((''.join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)),
                           trainer)
    return cls(hf.to_str())

  def encode(self, text: str) -> np.ndarray:
    # Line by line, in parallel (the library's batch encoder): merges never cross a line end.
    lines = text.splitlines(keepends=True)
    encodings = self._hf.encode_batch(lines) if lines else []
    ids = [e.ids for e in encodings]
    return np.fromiter((i for row in ids for i in row), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._hf.decode(np.asarray(ids).tolist())

  def _state(self) -> dict:
    return {'hf': self._json}

  def save_pretrained(self, directory: str | os.PathLike) -> None:
    """`tokenizer.json` (the `tokenizers` library's file) and the `tokenizer_config.json` that
    lets `transformers.AutoTokenizer` read it as GPT-2's tokenizer."""
    directory = pathlib.Path(directory)
    (directory / 'tokenizer.json').write_text(self._hf.to_str(), encoding='utf-8')
    special = GPT2_EOS if self.eos_id is not None else None
    (directory / 'tokenizer_config.json').write_text(json.dumps(
        {'tokenizer_class': 'GPT2Tokenizer', 'add_prefix_space': False, 'bos_token': special,
         'eos_token': special, 'unk_token': special}, indent=2), encoding='utf-8')


class Gpt2Tokenizer(BpeTokenizer):
  """GPT-2's tokenizer from a Hugging Face checkpoint: the same ids as Hugging Face's on any text
  (merges across line ends, `<|endoftext|>` as its special id), decoding special tokens too."""
  kind = 'gpt2'

  @classmethod
  def from_pretrained(cls, directory: str | os.PathLike) -> 'Gpt2Tokenizer':
    """From `tokenizer.json`, else from `vocab.json` + `merges.txt` built as `transformers`
    builds GPT-2's (no prefix space; `<|endoftext|>` special where the vocabulary has it)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers
    directory = pathlib.Path(directory)
    full, vocab, merges = (directory / name for name in ('tokenizer.json', 'vocab.json',
                                                         'merges.txt'))
    if not full.is_file() and not (vocab.is_file() and merges.is_file()):
      raise ConfigError(f'{directory} holds no GPT-2 tokenizer: it needs tokenizer.json, or '
                        'vocab.json and merges.txt')
    try:
      if full.is_file():
        return cls(tokenizers.Tokenizer.from_file(str(full)).to_str())
      hf = tokenizers.Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as e:  # noqa: BLE001 - Whatever the library raises: one line.
      raise ConfigError(f'cannot read the tokenizer in {directory}: {describe(e)}') from None
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    if hf.token_to_id(GPT2_EOS) is not None:
      hf.add_special_tokens([tokenizers.AddedToken(GPT2_EOS, special=True)])
    return cls(hf.to_str())

  def encode(self, text: str) -> np.ndarray:
    # In pieces, in parallel (the library's batch encoder), cut only where GPT-2's pre-tokenizer
    # cuts anyway: the ids of the whole text.
    pieces = [p for p in _GPT2_PIECES.split(text) if p]
    ids = [e.ids for e in self._hf.encode_batch(pieces)] if pieces else []
    return np.fromiter((i for row in ids for i in row), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._hf.decode(np.asarray(ids).tolist(), skip_special_tokens=False)


class WordTokenizer(Tokenizer):
  """The `vocab_size - 2` most frequent training words; 0 pads, 1 is an unknown word."""
  kind = 'word'
  PAD, UNKNOWN = 0, 1

  def __init__(self, words: list[str]):
    self.words = list(words)
    self.vocab_size = len(self.words) + 2
    self._ids = {w: i + 2 for i, w in enumerate(self.words)}

  @staticmethod
  def split(text: str) -> list[str]:
    return _WORD.findall(text.lower())

  @classmethod
  def build(cls, texts: Iterable[str], vocab_size: int) -> 'WordTokenizer':
    counts = collections.Counter(w for t in texts for w in cls.split(t))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # Ties broken by spelling.
    return cls([w for w, _ in ranked[:vocab_size - 2]])

  def encode(self, text: str) -> np.ndarray:
    return np.array([self._ids.get(w, self.UNKNOWN) for w in self.split(text)], np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return ' '.join('<unk>' if i == self.UNKNOWN else self.words[i - 2]
                    for i in np.asarray(ids).tolist() if i != self.PAD)

  def _state(self) -> dict:
    return {'words': self.words}


def build(kind: str, train_text: str | list[str], vocab_size: int = 0) -> Tokenizer:
  """A tokenizer of `kind` built from the training split (`vocab_size` for bpe and word)."""
  check_choice('dataset.tokenizer', kind, KINDS)
  if kind == 'gpt2':
    raise ConfigError('dataset.tokenizer=gpt2 is read from a Hugging Face GPT-2 checkpoint, not '
                      'built from the data: set init_from=hf:PATH')
  if kind in ('bpe', 'word') and vocab_size < (257 if kind == 'bpe' else 3):
    raise ConfigError(f'dataset.vocab_size={vocab_size} is too small for the {kind} tokenizer; '
                      f'use at least {257 if kind == "bpe" else 3}')
  text = train_text if isinstance(train_text, str) else '\n'.join(train_text)
  if kind == 'char':
    return CharTokenizer.build(text)
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    return BpeTokenizer.build(text, vocab_size)
  return WordTokenizer.build(train_text if isinstance(train_text, list) else [text], vocab_size)


def from_json(text: str) -> Tokenizer:
  state = json.loads(text)
  kind = state.pop('kind', None)
  if kind == 'char':
    return CharTokenizer(state['chars'])
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    return BpeTokenizer(state['hf'])
  if kind == 'gpt2':
    return Gpt2Tokenizer(state['hf'])
  if kind == 'word':
    return WordTokenizer(state['words'])
  raise DataError(f'unknown tokenizer kind {kind!r} in a saved tokenizer; allowed: '
                  f'{", ".join(KINDS)}')
