"""grain pipelines: an endless shuffled training stream and a padded, finite eval pass.

Both shard by process (each host reads every `process_count`-th record of the same global order),
so the union of the hosts' local batches is the global batch a single host would have built. The
training iterator's position is `get_state()` / `set_state()`, saved with every checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import grain
import jax
import numpy as np

from dl10_jax.data.sources import Augment, Batch, read_batch, unchanged
from dl10_jax.errors import ConfigError


def _local_batch_size(global_batch_size: int) -> int:
  count = jax.process_count()
  if global_batch_size % count:
    raise ConfigError(f'batch size {global_batch_size} is not divisible by the {count} processes; '
                      f'use a multiple of {count}')
  return global_batch_size // count


def _batches(source: Sequence[Any], indices: grain.MapDataset, local_batch_size: int,
             drop_remainder: bool, preprocess: Callable[[Batch], Batch]) -> grain.MapDataset:
  """Shards record indices by process, batches them, then reads each batch in one go."""
  indices = indices[jax.process_index()::jax.process_count()]
  return indices.batch(local_batch_size, drop_remainder=drop_remainder).map(
      lambda idx: preprocess(read_batch(source, idx)))


def train_iterator(source: Sequence[Any], global_batch_size: int, seed: int, prefetch: int,
                   preprocess: Callable[[Batch], Batch] = unchanged,
                   augment: Augment | None = None) -> grain.DatasetIterator:
  """An endless iterator of local batches, reshuffled every epoch, checkpointable.

  `augment(batch, rng)` draws from a generator seeded by (seed, process, batch position in the
  stream): every epoch sees new random crops, and a resumed iterator the same ones as before.
  """
  # Shuffling indices rather than records keeps per-example Python work to an integer.
  indices = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
  ds = _batches(source, indices, _local_batch_size(global_batch_size), True, preprocess)
  if augment is not None:
    process = jax.process_index()
    ds = ds.map_with_index(
        lambda i, batch: augment(batch, np.random.default_rng([seed, process, i])))
  # One reader thread prepares the next batches while the device runs the current step.
  options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(prefetch, 1))
  return iter(ds.to_iter_dataset(options))


def eval_batches(source: Sequence[Any], global_batch_size: int,
                 preprocess: Callable[[Batch], Batch] = unchanged) -> Iterator[Batch]:
  """One pass over `source` in full batches; padding rows carry `mask == 0`.

  Every process yields the same number of batches, so a multi-host eval stays in lockstep.
  """
  local_size = _local_batch_size(global_batch_size)
  num_batches = math.ceil(len(source) / global_batch_size)
  ds = _batches(source, grain.MapDataset.range(len(source)), local_size, False, preprocess)
  for i in range(num_batches):
    if i < len(ds):
      batch = ds[i]
      n = len(next(iter(batch.values())))
    else:  # This host ran out of records: a fully masked batch of the same shape.
      batch = jax.tree.map(np.zeros_like, preprocess(read_batch(source, np.zeros(1, np.int64))))
      n = 0
    pad = local_size - n
    batch = jax.tree.map(lambda x: np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                         if pad else x, batch)
    batch['mask'] = (np.arange(local_size) < n).astype(np.float32)
    yield batch
