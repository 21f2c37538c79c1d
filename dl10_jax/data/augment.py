"""Random image transforms of training batches: crop with zero padding, horizontal flip.

Vectorized over the batch (one gather, one select) on the reader thread. The generator comes from
the pipeline, seeded by the batch's position in the stream, so augmentation is reproducible and
resumes exactly with the iterator (data/pipeline.py).
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from dl10_jax.data.sources import Augment, Batch
from dl10_jax.errors import ConfigError

TRANSFORMS = ('crop', 'flip')


def random_crop(images: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
  """Each [H, W, C] image of [B, H, W, C] shifted by up to `padding` pixels, zeros filling in."""
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  dy, dx = rng.integers(0, 2 * padding + 1, (2, b))
  rows = dy[:, None] + np.arange(h)[None, :]  # [B, H]
  cols = dx[:, None] + np.arange(w)[None, :]  # [B, W]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Each image mirrored left-right with probability 1/2."""
  flip = rng.random(images.shape[0]) < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def _apply(batch: Batch, rng: np.random.Generator, transforms: tuple[str, ...],
           padding: int) -> Batch:
  images = batch['image']
  if 'crop' in transforms:
    images = random_crop(images, rng, padding)
  if 'flip' in transforms:
    images = random_flip(images, rng)
  return dict(batch, image=images)


def from_config(config: ml_collections.ConfigDict) -> Augment | None:
  """The transforms `dataset.augment` lists (comma-separated; '' for none)."""
  names = tuple(n.strip() for n in config.get('augment', '').split(',') if n.strip())
  for name in names:
    if name not in TRANSFORMS:
      raise ConfigError(f'dataset.augment has {name!r}; allowed: {", ".join(TRANSFORMS)} '
                        '(comma-separated, or empty)')
  padding = config.get('crop_padding', 4)
  if 'crop' in names and padding < 1:
    raise ConfigError(f'dataset.crop_padding={padding} must be >= 1 with crop')
  return functools.partial(_apply, transforms=names, padding=padding) if names else None
