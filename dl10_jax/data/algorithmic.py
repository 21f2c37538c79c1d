"""Algorithmic translation, generated on the fly: reverse, sort, or add digit strings.

Record i of a split is a pure function of (dataset seed, split, i), so a source is random-access
like an array: the pipeline shuffles and resumes it exactly from the grain iterator's saved
position, and the eval split is the same every run. Records are {'source': int32[S], 'target':
int32[T], 'group': int32}, 0-padded to the split's longest; a target ends with EOS.

  reverse  3 1 4 1 5      -> 5 1 4 1 3 EOS
  sort     3 1 4 1 5      -> 1 1 3 4 5 EOS
  add      1 2 7 + 9 5    -> 2 2 2 EOS        (operands without leading zeros; digit_order='msd')
           7 2 1 + 5 9    -> 2 2 2 EOS        (digit_order='lsd': every number written backwards)

Addition written least-significant digit first lets the decoder emit each digit from the two digits
at the same place plus the carry it has just produced, the order in which people add; written
most-significant first, the first output digit depends on every input digit (Lee et al. 2023,
"Teaching arithmetic to small transformers", find the same). The numbers are the same either way.

Training lengths are uniform in [min_len, max_len] (per operand for add). The eval split interleaves
groups (record i is in group i % G): training lengths first, then each of `eval_lengths` exactly
(e.g. 1.5x and 2x max_len, for length generalisation); the seq2seq objective reports each group.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from dl10_jax.data.sources import Splits
from dl10_jax.errors import ConfigError, check_choice

DATASETS = ('algorithmic',)
TASKS = ('reverse', 'sort', 'add')
DIGIT_ORDERS = ('msd', 'lsd')  # How add writes numbers: most or least significant digit first.
PAD, BOS, EOS, PLUS, DIGIT0 = 0, 1, 2, 3, 4  # BOS starts the decoder; it is never in a record.
VOCAB_SIZE = DIGIT0 + 10


def source_length(task: str, n: int) -> int:
  return 2 * n + 1 if task == 'add' else n


def target_length(task: str, n: int) -> int:
  return n + 2 if task == 'add' else n + 1  # A sum of two n-digit numbers has <= n + 1 digits.


def example(task: str, rng: np.random.Generator, lo: int, hi: int,
            digit_order: str = 'msd') -> tuple[list[int], list[int]]:
  """One (source, target) pair of digit lengths in [lo, hi], as token ids (target without EOS)."""
  if task == 'add':
    a, b = (_number(rng, int(rng.integers(lo, hi + 1))) for _ in range(2))
    step = -1 if digit_order == 'lsd' else 1
    digits = lambda n: [DIGIT0 + int(c) for c in str(n)[::step]]
    return digits(a) + [PLUS] + digits(b), digits(a + b)
  digits = rng.integers(0, 10, int(rng.integers(lo, hi + 1)))
  out = digits[::-1] if task == 'reverse' else np.sort(digits)
  return [DIGIT0 + int(d) for d in digits], [DIGIT0 + int(d) for d in out]


def _number(rng: np.random.Generator, n: int) -> int:
  digits = rng.integers(0, 10, n)
  if n > 1:
    digits[0] = rng.integers(1, 10)
  return int(''.join(map(str, digits)))


class AlgorithmicSource:
  """`size` generated records; group g has digit lengths in lengths[g] = (lo, hi)."""

  def __init__(self, task: str, seed: int, split: int, size: int,
               lengths: list[tuple[int, int]], digit_order: str = 'msd'):
    self._task, self._seed, self._split, self._size = task, seed, split, size
    self._digit_order = digit_order
    self._lengths = lengths
    longest = max(hi for _, hi in lengths)
    self.source_len, self.target_len = source_length(task, longest), target_length(task, longest)

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    if not 0 <= i < self._size:
      raise IndexError(i)
    group = i % len(self._lengths)
    rng = np.random.default_rng([self._seed, self._split, i])
    src, tgt = example(self._task, rng, *self._lengths[group], self._digit_order)
    source = np.zeros(self.source_len, np.int32)
    target = np.zeros(self.target_len, np.int32)
    source[:len(src)] = src
    target[:len(tgt) + 1] = tgt + [EOS]
    return {'source': source, 'target': target, 'group': np.int32(group)}


def load(config: ml_collections.ConfigDict) -> Splits:
  """The task `config.task` (the `dataset` sub-config): train and grouped eval sources."""
  task, lo, hi = config.task, config.min_len, config.max_len
  check_choice('dataset.task', task, TASKS)
  if not 1 <= lo <= hi:
    raise ConfigError(f'dataset.min_len={lo} and dataset.max_len={hi} need 1 <= min_len <= max_len')
  digit_order = config.get('digit_order', 'msd')
  check_choice('dataset.digit_order', digit_order, DIGIT_ORDERS)
  eval_lengths = tuple(config.eval_lengths)
  if any(n < 1 for n in eval_lengths):
    raise ConfigError(f'dataset.eval_lengths={eval_lengths} must all be >= 1')
  for field in ('train_size', 'eval_size'):
    if config[field] < 1:
      raise ConfigError(f'dataset.{field}={config[field]} must be >= 1')
  groups = [(lo, hi)] + [(n, n) for n in eval_lengths]
  train = AlgorithmicSource(task, config.seed, 0, config.train_size, groups[:1], digit_order)
  evals = AlgorithmicSource(task, config.seed, 1, config.eval_size * len(groups), groups,
                            digit_order)
  return Splits(train, evals, num_classes=None, input_key='source',
                eval_groups=('train_lengths',) + tuple(f'len{n}' for n in eval_lengths))
