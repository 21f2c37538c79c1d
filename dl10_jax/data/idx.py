"""Reader for the IDX files of MNIST and Fashion-MNIST (the format of LeCun's MNIST release).

Fashion-MNIST is the offline default: Debian's `dataset-fashion-mnist` puts it in
`/usr/share/datasets/fashion-mnist/`. Any directory with the standard file names works the same way
(`dataset.data_dir` or the `DL10_DATA_DIR` env var), so real MNIST needs no other code.
"""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from dl10_jax.errors import DataError

DEBIAN_DIRS = {'fashion_mnist': '/usr/share/datasets/fashion-mnist'}
FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_HOW_TO_GET = ('install the Debian package with `make setup` (or `apt-get install '
               'dataset-fashion-mnist`), or set dataset.data_dir / DL10_DATA_DIR to a directory '
               'holding the four MNIST-format files (optionally .gz)')


def default_dir(name: str, data_dir: str = '') -> str | None:
  """Where to look for `name`'s IDX files: the config, then the env var, then Debian's path."""
  return data_dir or os.environ.get('DL10_DATA_DIR') or DEBIAN_DIRS.get(name)


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path:
  for candidate in (directory / f'{stem}.gz', directory / stem):
    if candidate.exists():
      return candidate
  raise DataError(f'missing IDX file {directory / stem}[.gz]; {_HOW_TO_GET}')


def _read(path: pathlib.Path, expected_ndim: int) -> np.ndarray:
  opener = gzip.open if path.suffix == '.gz' else open
  try:
    with opener(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f'cannot read {path} ({e}); {_HOW_TO_GET}') from None
  # Header: two zero bytes, a type code (0x08 = uint8), the number of dims, then big-endian sizes.
  if len(raw) < 4 or raw[:3] != b'\x00\x00\x08' or raw[3] != expected_ndim:
    raise DataError(f'{path} is not a uint8 IDX file with {expected_ndim} dims; {_HOW_TO_GET}')
  shape = tuple(np.frombuffer(raw, dtype='>u4', count=expected_ndim, offset=4))
  offset = 4 + 4 * expected_ndim
  if len(raw) - offset != int(np.prod(shape)):
    raise DataError(f'{path} is truncated or corrupt: header says {shape}, found '
                    f'{len(raw) - offset} bytes of data; {_HOW_TO_GET}')
  return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def load(directory: str, split: str) -> dict[str, np.ndarray]:
  """Returns {'image': uint8[N, 28, 28, 1], 'label': int32[N]} for split 'train' or 'test'."""
  path = pathlib.Path(directory)
  if not path.is_dir():
    raise DataError(f'IDX data directory {directory} does not exist; {_HOW_TO_GET}')
  images_stem, labels_stem = FILES[split]
  images = _read(_find(path, images_stem), expected_ndim=3)
  labels = _read(_find(path, labels_stem), expected_ndim=1)
  if len(images) != len(labels):
    raise DataError(f'{directory}: {len(images)} {split} images but {len(labels)} labels')
  return {'image': images[..., None], 'label': labels.astype(np.int32)}
