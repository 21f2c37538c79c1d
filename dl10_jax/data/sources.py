"""Random-access data sources and the image datasets (IDX files, TFDS by name).

A source is anything with `__len__` and `__getitem__` returning a dict of numpy values (grain's
`RandomAccessDataSource` protocol). Image classification records are
`{'image': uint8[H, W, C], 'label': int}`. A source may also offer `read_batch(indices)`, which the
pipeline then uses to read a whole batch in one vectorized call. `Splits` carries what the rest of
the stack needs to know of a dataset: its preprocessing, the field the model reads, its tokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from dl10_jax.data import idx
from dl10_jax.errors import ConfigError, DataError, check_choice

IDX_DATASETS = ('fashion_mnist', 'mnist')
SOURCES = ('auto', 'idx', 'tfds')


def read_batch(source: Sequence[Any], indices: np.ndarray) -> dict[str, np.ndarray]:
  """The records at `indices`, stacked; one vectorized read when the source offers it."""
  if hasattr(source, 'read_batch'):
    return source.read_batch(indices)
  records = [source[int(i)] for i in indices]
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


class ArraySource:
  """A dict of equally long arrays, read by record or, vectorized, by a batch of indices."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self._arrays = arrays
    self._len = len(next(iter(arrays.values())))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {k: v[i] for k, v in self._arrays.items()}

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self._arrays.items()}


class LimitedSource:
  """The first `limit` records of another source."""

  def __init__(self, source: Sequence[Any], limit: int):
    self._source, self._len = source, min(limit, len(source))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> Any:
    if not 0 <= i < self._len:
      raise IndexError(i)
    return self._source[i]

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return read_batch(self._source, indices)


Batch = dict[str, np.ndarray]
Augment = Callable[[Batch, np.random.Generator], Batch]  # Training batches only.


def scale_images(batch: Batch) -> Batch:
  """uint8 pixels -> float32 in [0, 1]; other fields pass through."""
  if 'image' in batch:
    batch = dict(batch, image=batch['image'].astype(np.float32) * np.float32(1 / 255))
  return batch


def numeric_images(batch: Batch) -> Batch:
  """TFDS records without their text fields (cifar10's 'id'), which no device can hold; scaled."""
  return scale_images({k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in 'OSU'})


def unchanged(batch: Batch) -> Batch:
  return batch


@dataclasses.dataclass(frozen=True)
class Splits:
  train: Sequence[Any]
  eval: Sequence[Any]
  num_classes: int | None  # None for datasets without class labels.
  # Applied to each batch by the pipeline (on the reader thread), so the loop never special-cases
  # a modality.
  preprocess: Callable[[Batch], Batch] = unchanged
  augment: Augment | None = None  # Random transforms of training batches, after preprocess.
  input_key: str = 'image'  # The batch field the model reads.
  tokenizer: Any = None  # data.tokenizer.Tokenizer of text datasets; saved with the run.
  chars_per_token: float = 1.0  # Of the eval split: turns nats per token into nats per char.
  # Names of the eval split's groups (record field 'group' indexes them), reported separately.
  eval_groups: tuple[str, ...] = ()


def _tfds(name: str, data_dir: str) -> Splits:
  import tensorflow_datasets as tfds  # Slow import; only when a TFDS dataset is asked for.
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # TFDS raises several kinds for an unknown name.
    raise ConfigError(f'dataset.name={name!r} is neither an IDX dataset ({", ".join(IDX_DATASETS)}) '
                      f'nor a TFDS dataset: {str(e).splitlines()[0]}') from None
  try:
    train, test = (tfds.data_source(name, split=s, data_dir=data_dir or None, download=False)
                   for s in ('train', 'test'))
  except Exception as e:  # Not prepared: KeyError / AssertionError depending on the TFDS version.
    raise DataError(
        f'TFDS dataset {name!r} is not prepared in {builder.data_dir}: prepare it once with '
        f'internet access (`pip install -r requirements-tfds.txt && tfds build {name}`), or use '
        f'an offline IDX dataset ({e.__class__.__name__}: {str(e).splitlines()[0]})') from None
  features = builder.info.features
  label = features['label'] if 'label' in features.keys() else None
  return Splits(train, test, getattr(label, 'num_classes', None), preprocess=numeric_images)


def load_images(config: ml_collections.ConfigDict) -> Splits:
  """The image dataset `config` (the `dataset` sub-config) names: IDX files or TFDS."""
  name, source = config.name, config.get('source', 'auto')
  check_choice('dataset.source', source, SOURCES)
  directory = idx.default_dir(name, config.data_dir) if name in IDX_DATASETS else None
  if source == 'idx' and name not in IDX_DATASETS:
    raise ConfigError(f'dataset.source=idx supports only {", ".join(IDX_DATASETS)}, not {name!r}')
  if source == 'idx' or (source == 'auto' and directory):
    if not directory:
      raise DataError(f'no IDX directory for {name!r}: set dataset.data_dir or DL10_DATA_DIR')
    return Splits(ArraySource(idx.load(directory, 'train')),
                  ArraySource(idx.load(directory, 'test')), num_classes=10,
                  preprocess=scale_images)
  return _tfds(name, config.data_dir if source == 'tfds' else '')


def limit(splits: Splits, config: ml_collections.ConfigDict) -> Splits:
  """Keeps the first `num_train_examples` / `num_eval_examples` (> 0) records of each split."""
  n_train, n_eval = config.get('num_train_examples', -1), config.get('num_eval_examples', -1)
  splits = dataclasses.replace(
      splits,
      train=LimitedSource(splits.train, n_train) if n_train > 0 else splits.train,
      eval=LimitedSource(splits.eval, n_eval) if n_eval > 0 else splits.eval)
  if len(splits.train) == 0 or len(splits.eval) == 0:
    raise DataError(f'dataset {config.name!r} has an empty split (train={len(splits.train)}, '
                    f'eval={len(splits.eval)})')
  return splits
