"""Baselines for the Shakespeare genre task: the majority class and bag-of-words naive Bayes.

The same split, passages and word tokenizer as configs/rnn.py (one held-out play per genre):

  python scripts/genre_baselines.py [--config configs/rnn.py]

Prints validation accuracy of each, for the table in experiments/rnn/README.md.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from absl import app
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/rnn.py', 'A genre-task config.')


def bag_of_words(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
  """[N, L] ids (0 pads) -> [N, V] counts."""
  counts = np.zeros((len(tokens), vocab_size))
  rows = np.repeat(np.arange(len(tokens)), tokens.shape[1])
  np.add.at(counts, (rows, tokens.reshape(-1)), 1)
  counts[:, 0] = 0  # Padding.
  return counts


def naive_bayes(train_x, train_y, eval_x, num_classes: int, alpha: float = 1.0) -> np.ndarray:
  """Multinomial naive Bayes with Laplace smoothing: predicted labels of eval_x."""
  log_prior = np.log(np.bincount(train_y, minlength=num_classes) / len(train_y))
  word_counts = np.stack([train_x[train_y == c].sum(0) for c in range(num_classes)]) + alpha
  log_likelihood = np.log(word_counts / word_counts.sum(1, keepdims=True))
  return (eval_x @ log_likelihood.T + log_prior).argmax(1)


def main(argv):
  del argv
  from dl10_jax import data
  config = _CONFIG.value
  splits = data.load(config.dataset)
  read = lambda source: source.read_batch(np.arange(len(source)))
  train, valid = read(splits.train), read(splits.eval)
  majority = np.bincount(train['label']).argmax()
  vocab = splits.tokenizer.vocab_size
  predicted = naive_bayes(bag_of_words(train['tokens'], vocab), train['label'],
                          bag_of_words(valid['tokens'], vocab), splits.num_classes)
  print(f'passages: {len(train["label"])} train, {len(valid["label"])} validation')
  print(f'majority class ({majority}): {np.mean(valid["label"] == majority):.1%}')
  print(f'always the most frequent validation class: '
        f'{np.bincount(valid["label"]).max() / len(valid["label"]):.1%}')
  print(f'bag-of-words naive Bayes: {np.mean(predicted == valid["label"]):.1%}')


if __name__ == '__main__':
  app.run(main)
