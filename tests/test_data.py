"""Data: the IDX reader, sources by name, and the grain pipelines' order, coverage and state."""

import gzip
import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dl10_jax import config_lib, data
from dl10_jax.data import idx, pipeline, sources
from dl10_jax.errors import ConfigError, DataError


def _write_idx(path: pathlib.Path, array: np.ndarray, compress: bool) -> None:
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, '>u4').tobytes()
  payload = header + array.astype(np.uint8).tobytes()
  if compress:
    path = path.with_name(path.name + '.gz')
    payload = gzip.compress(payload)
  path.write_bytes(payload)


@pytest.fixture
def idx_dir(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (('train', 50), ('test', 20)):
    images, labels = idx.FILES[split]
    _write_idx(tmp_path / images, rng.integers(0, 256, (n, 28, 28)), compress=True)
    _write_idx(tmp_path / labels, np.arange(n) % 10, compress=False)  # Plain files work too.
  return tmp_path


def _dataset_config(**overrides):
  config = config_lib.base_config().dataset
  config.update(overrides)
  return config


def test_idx_reader_reads_what_was_written(idx_dir):
  data = idx.load(str(idx_dir), 'test')
  assert data['image'].shape == (20, 28, 28, 1) and data['image'].dtype == np.uint8
  np.testing.assert_array_equal(data['label'], np.arange(20) % 10)


def test_data_dir_points_mnist_at_any_idx_directory(idx_dir, monkeypatch):
  splits = data.load(_dataset_config(name='mnist', data_dir=str(idx_dir)))
  assert (len(splits.train), len(splits.eval), splits.num_classes) == (50, 20, 10)
  monkeypatch.setenv('DL10_DATA_DIR', str(idx_dir))
  assert len(data.load(_dataset_config(name='mnist')).train) == 50


def test_missing_or_corrupt_files_say_how_to_get_them(idx_dir, tmp_path_factory):
  with pytest.raises(DataError, match='does not exist.*apt-get install dataset-fashion-mnist'):
    idx.load('/nonexistent/dir', 'train')
  (idx_dir / 't10k-labels-idx1-ubyte').write_bytes(b'\x00\x00\x08\x01\x00\x00\x00\x14abc')
  with pytest.raises(DataError, match='truncated or corrupt'):
    idx.load(str(idx_dir), 'test')
  (idx_dir / 't10k-labels-idx1-ubyte').unlink()
  with pytest.raises(DataError, match='missing IDX file .*t10k-labels-idx1-ubyte'):
    idx.load(str(idx_dir), 'test')


def test_bad_dataset_names_are_config_errors():
  with pytest.raises(ConfigError, match='dataset.name is empty'):
    data.load(_dataset_config(name=''))
  with pytest.raises(ConfigError, match="dataset.source='s3' is not supported"):
    data.load(_dataset_config(name='mnist', source='s3'))
  with pytest.raises(ConfigError, match="nor a TFDS dataset"):
    data.load(_dataset_config(name='no_such_dataset_xyz', source='tfds'))


def test_real_fashion_mnist_is_the_offline_default():
  splits = data.load(_dataset_config(name='fashion_mnist'))
  assert (len(splits.train), len(splits.eval)) == (60_000, 10_000)
  record = splits.eval[0]
  assert record['image'].shape == (28, 28, 1) and record['image'].dtype == np.uint8
  labels = np.asarray([splits.eval[i]['label'] for i in range(0, 10_000, 7)])
  assert set(labels) == set(range(10))


def test_tfds_sources_by_name_with_mock_data():
  with tfds.testing.mock_data(num_examples=24):
    splits = data.load(_dataset_config(name='mnist', source='tfds'))
  assert len(splits.train) == 24 and splits.num_classes == 10
  batch = next(pipeline.train_iterator(splits.train, 8, seed=0, prefetch=1,
                                       preprocess=splits.preprocess))
  assert batch['image'].shape == (8, 28, 28, 1) and batch['image'].dtype == np.float32


def test_train_stream_covers_each_epoch_once_and_reshuffles():
  source = sources.ArraySource({'image': np.zeros((12, 1, 1, 1), np.uint8),
                                'label': np.arange(12)})
  it = pipeline.train_iterator(source, 4, seed=3, prefetch=1)
  epochs = [np.concatenate([next(it)['label'] for _ in range(3)]) for _ in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
  assert list(epochs[0]) != list(epochs[1])  # A new order every epoch.
  again = pipeline.train_iterator(source, 4, seed=3, prefetch=1)
  np.testing.assert_array_equal(next(again)['label'], epochs[0][:4])  # Same seed, same order.


def test_train_iterator_state_resumes_the_exact_stream():
  source = sources.ArraySource({'label': np.arange(100)})
  it = pipeline.train_iterator(source, 8, seed=0, prefetch=2)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it)['label'] for _ in range(20)]  # Crosses an epoch boundary.
  resumed = pipeline.train_iterator(source, 8, seed=0, prefetch=2)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)['label'], want)


def test_eval_batches_pad_and_mask_the_last_batch():
  source = sources.ArraySource({'image': np.full((10, 2, 2, 1), 255, np.uint8),
                                'label': np.arange(10)})
  batches = list(pipeline.eval_batches(source, 4, sources.scale_images))
  assert [b['image'].shape[0] for b in batches] == [4, 4, 4]
  assert [b['mask'].sum() for b in batches] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches])[:10], np.arange(10))
  assert batches[0]['image'].max() == 1.0  # uint8 pixels scaled to [0, 1].


def test_hosts_split_each_global_batch_and_stay_in_lockstep_in_eval(monkeypatch):
  """With 2 processes, each reads half of every global batch; eval passes have equal lengths."""
  source = sources.ArraySource({'label': np.arange(50)})
  single = pipeline.train_iterator(source, 8, seed=1, prefetch=1)
  want = [sorted(next(single)['label']) for _ in range(10)]
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  local, evals = [], []
  for host in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda host=host: host)
    it = pipeline.train_iterator(source, 8, seed=1, prefetch=1)
    local.append([next(it)['label'] for _ in range(10)])
    evals.append(list(pipeline.eval_batches(sources.ArraySource({'label': np.arange(11)}), 4)))
  for step in range(10):
    assert local[0][step].shape == local[1][step].shape == (4,)
    assert sorted(np.concatenate([local[0][step], local[1][step]])) == want[step]
  assert len(evals[0]) == len(evals[1]) == 3  # ceil(11 / 4) on every host.
  seen = [int(l) for batches in evals for b in batches for l, m in zip(b['label'], b['mask']) if m]
  assert sorted(seen) == list(range(11))
