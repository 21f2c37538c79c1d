"""Input pipelines: random-access sources (`sources`, `text`) read through grain (`pipeline`)."""

from __future__ import annotations

import dataclasses

import ml_collections

from dl10_jax.data import algorithmic, augment, sources, text, translated
from dl10_jax.data.pipeline import eval_batches, train_iterator
from dl10_jax.data.sources import Splits
from dl10_jax.data.tokenizer import Tokenizer
from dl10_jax.errors import ConfigError

__all__ = ['Splits', 'Tokenizer', 'eval_batches', 'load', 'train_iterator']


def load(config: ml_collections.ConfigDict, saved_tokenizer: Tokenizer | None = None) -> Splits:
  """The train and eval sources `config` (the `dataset` sub-config) names.

  Text datasets are tokenized by `saved_tokenizer` (a resumed run's, or a pretrained checkpoint's)
  if given, else by one built from the training split.
  """
  if not config.name:
    raise ConfigError('dataset.name is empty; set it to an image dataset '
                      f'({", ".join(sources.IDX_DATASETS)} or a prepared TFDS name), a text '
                      f'dataset ({", ".join(text.DATASETS)}) or a generated one '
                      f'({", ".join(algorithmic.DATASETS + translated.DATASETS)})')
  if config.name in text.DATASETS:
    splits = text.load(config, saved_tokenizer)
  elif config.name in algorithmic.DATASETS:
    splits = algorithmic.load(config)
  elif config.name in translated.DATASETS:
    splits = translated.load(config)
  else:
    splits = dataclasses.replace(sources.load_images(config), augment=augment.from_config(config))
  if config.get('augment') and splits.augment is None:
    raise ConfigError(f'dataset.augment={config.augment!r} applies to image datasets, not '
                      f'{config.name!r}')
  return sources.limit(splits, config)
