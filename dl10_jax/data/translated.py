"""Translated (and optionally cluttered) images: where is the object? (Mnih et al. 2014).

Each 28x28 image is placed at a random position of a `canvas` x `canvas` black canvas; `clutter`
random `clutter_size` crops of other images of the same split are drawn underneath first. The
placement of record i is a pure function of (dataset seed, split, i), so evaluation is the same
every run and a resumed run reads the same images. Records: {'image': uint8[canvas, canvas, C],
'label': int}, scaled to [0, 1] by the pipeline like any image dataset.
"""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections
import numpy as np

from dl10_jax.data import sources
from dl10_jax.errors import ConfigError

DATASETS = ('translated_fashion_mnist', 'translated_mnist')


class TranslatedSource:
  """`base` (records {'image': uint8[h, w, C], 'label'}) placed on a larger, cluttered canvas."""

  def __init__(self, base: Sequence[Any], canvas: int, clutter: int, clutter_size: int,
               seed: int, split: int):
    self._base, self._canvas, self._clutter = base, canvas, clutter
    self._clutter_size, self._seed, self._split = clutter_size, seed, split

  def __len__(self) -> int:
    return len(self._base)

  def __getitem__(self, i: int) -> dict[str, Any]:
    if not 0 <= i < len(self):
      raise IndexError(i)
    record = self._base[i]
    image = np.asarray(record['image'], np.uint8)
    h, w, c = image.shape
    rng = np.random.default_rng([self._seed, self._split, i])
    out = np.zeros((self._canvas, self._canvas, c), np.uint8)
    s = self._clutter_size
    for _ in range(self._clutter):  # Pieces of other images, under the object.
      other = np.asarray(self._base[int(rng.integers(len(self._base)))]['image'], np.uint8)
      (sy, sx), (ty, tx) = rng.integers(0, [h - s + 1, w - s + 1]), \
          rng.integers(0, self._canvas - s + 1, 2)
      np.maximum(out[ty:ty + s, tx:tx + s], other[sy:sy + s, sx:sx + s],
                 out=out[ty:ty + s, tx:tx + s])
    y, x = rng.integers(0, [self._canvas - h + 1, self._canvas - w + 1])
    np.maximum(out[y:y + h, x:x + w], image, out=out[y:y + h, x:x + w])
    return {'image': out, 'label': np.int32(record['label'])}


def load(config: ml_collections.ConfigDict) -> sources.Splits:
  """`translated_<base>`: the base image dataset's splits on canvases (the `dataset` sub-config)."""
  base = sources.load_images(ml_collections.ConfigDict(dict(
      config.to_dict(), name=config.name.removeprefix('translated_'))))
  image = np.asarray(base.train[0]['image'])
  if config.canvas < max(image.shape[:2]):
    raise ConfigError(f'dataset.canvas={config.canvas} is smaller than the images '
                      f'({image.shape[0]}x{image.shape[1]})')
  if config.clutter < 0 or not 1 <= config.clutter_size <= min(image.shape[:2]):
    raise ConfigError(f'dataset.clutter={config.clutter} must be >= 0 and dataset.clutter_size='
                      f'{config.clutter_size} in [1, {min(image.shape[:2])}]')
  wrap = lambda source, split: TranslatedSource(source, config.canvas, config.clutter,
                                                config.clutter_size, config.seed, split)
  return sources.Splits(wrap(base.train, 0), wrap(base.eval, 1), base.num_classes,
                        preprocess=sources.scale_images)
