"""Input pipelines: random-access sources (`sources`) read through grain (`pipeline`)."""

from dl10_jax.data.pipeline import eval_batches, train_iterator
from dl10_jax.data.sources import Splits, load

__all__ = ['Splits', 'eval_batches', 'load', 'train_iterator']
