"""classifier_fid (this project's Fashion-MNIST classifier, not Inception-FID): it ranks real images
far above noise and blur, ignores sample order and masked rows, and rejects other image shapes."""

import json

import jax
import numpy as np
import pytest
import scipy.linalg
from absl import flags

from conftest import ROOT, read_metrics
from dl10_jax.errors import ConfigError
from dl10_jax.train import image_quality


@pytest.fixture(scope='session')
def classifier_dir(tmp_path_factory):
  """A weak classifier (a few seconds of training), shared by every test of the session."""
  directory = tmp_path_factory.getbasetemp() / 'quality_classifier'
  if not (directory / 'info.json').exists():
    image_quality.train_classifier(str(directory), num_steps=60, batch_size=64)
  return directory


@pytest.fixture(scope='module')
def classifier(classifier_dir):
  return image_quality.load_feature_classifier(str(classifier_dir))


@pytest.fixture(scope='module')
def images():
  """1,000 test and 1,000 train images of Fashion-MNIST in [-1, 1]."""
  return image_quality.real_images('test')[:1000], image_quality.real_images('train')[:1000]


def _blur(x):  # A 5x5 box blur, edges clamped.
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='edge')
  return np.mean([padded[:, i:i + 28, j:j + 28] for i in range(5) for j in range(5)], axis=0)


def test_real_images_score_far_better_than_noise_and_blur(classifier, images):
  test, train = images
  real = image_quality.score(classifier, test, train)
  noise = image_quality.score(classifier, np.random.default_rng(0).uniform(
      -1, 1, test.shape).astype(np.float32), train)
  blurred = image_quality.score(classifier, _blur(test), train)
  assert real['classifier_fid'] * 5 < blurred['classifier_fid'] < noise['classifier_fid'], \
      (real, blurred, noise)
  assert real['classifier_confidence'] > blurred['classifier_confidence']
  assert real['class_histogram_ratio'] < 3  # The test split is balanced.
  assert classifier.test_accuracy > 0.5


def test_score_ignores_order_and_batching_and_is_deterministic(classifier, images):
  test, train = images
  first = image_quality.score(classifier, test[:600], train[:700], batch_size=256)
  again = image_quality.score(classifier, test[:600], train[:700], batch_size=256)
  assert first == again
  order = np.random.default_rng(1).permutation(600)
  shuffled = image_quality.score(classifier, test[:600][order], train[:700], batch_size=100)
  for k, v in first.items():
    assert shuffled[k] == pytest.approx(v, rel=1e-5), k


def test_masked_rows_count_for_nothing_and_sums_add_up(classifier, images):
  import jax.numpy as jnp
  test = jnp.asarray(images[0][:64])
  features, logits = classifier.features_and_logits(test)
  whole = image_quality.moment_sums(features, logits, jnp.ones(64))
  halves = [image_quality.moment_sums(features[s], logits[s], jnp.ones(32))
            for s in (slice(0, 32), slice(32, 64))]
  junk = jnp.concatenate([test[:32], -jnp.ones((32, 28, 28, 1))])
  masked = image_quality.moment_sums(*classifier.features_and_logits(junk),
                                     jnp.arange(64) < 32)
  for k in whole:
    np.testing.assert_allclose(halves[0][k] + halves[1][k], whole[k], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(masked[k], halves[0][k], rtol=1e-5, atol=1e-4)
  assert float(whole['count']) == 64 and float(whole['class_histogram'].sum()) == 64


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 12, 12))
  cov1, cov2 = a @ a.T + 0.1 * np.eye(12), b @ b.T + 0.1 * np.eye(12)
  mean1, mean2 = rng.normal(size=(2, 12))
  root = scipy.linalg.sqrtm(cov1 @ cov2).real
  want = np.sum((mean1 - mean2) ** 2) + np.trace(cov1 + cov2 - 2 * root)
  assert image_quality.frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(want, rel=1e-8)
  assert image_quality.frechet_distance(mean1, cov1, mean1, cov1) == pytest.approx(0, abs=1e-8)


def test_padded_32x32_images_are_cropped_and_other_shapes_are_one_clear_error(classifier, images):
  test = images[0][:100]
  padded = np.pad(test, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1)
  np.testing.assert_allclose(classifier.features_and_logits(padded)[1],
                             classifier.features_and_logits(test)[1], rtol=1e-5, atol=1e-5)
  for shape in ((4, 28, 28, 3), (4, 64, 64, 1), (28, 28)):
    with pytest.raises(ConfigError, match=r'classifier_fid metric is for 28x28 grey images'):
      image_quality.score(classifier, np.zeros(shape, np.float32), test)


@pytest.mark.slow
def test_the_default_cache_trains_the_classifier_once(tmp_path, monkeypatch):
  monkeypatch.setenv('DL10_CACHE_DIR', str(tmp_path))
  train = image_quality.train_classifier
  monkeypatch.setattr(image_quality, 'train_classifier',
                      lambda: train(num_steps=10))  # A weak one, in seconds.
  first = image_quality.load_feature_classifier()
  assert (tmp_path / f'quality_classifier_v{image_quality.VERSION}' / 'info.json').is_file()

  def fail():
    raise AssertionError('trained twice')
  monkeypatch.setattr(image_quality, 'train_classifier', fail)
  second = image_quality.load_feature_classifier()
  jax.tree.map(np.testing.assert_array_equal, first.params, second.params)


def test_missing_classifier_names_the_command(tmp_path):
  with pytest.raises(ConfigError, match=r'`python -m dl10_jax.train.image_quality --train '
                     r'--cache_dir .*`'):
    image_quality.load_feature_classifier(str(tmp_path / 'none'))


def test_the_classifier_trains_through_main_with_its_config(tmp_path):
  """configs/quality_classifier.py is an ordinary experiment: main trains and evaluates it."""
  from dl10_jax import main
  main.parse_flags(['main', '--config', f'{ROOT / "configs/quality_classifier.py"}:smoke',
                    '--workdir', str(tmp_path)])
  try:
    main.main(['main'])
  finally:
    flags.FLAGS.unparse_flags()
  final = [e for e in read_metrics(tmp_path) if 'eval_accuracy' in e][-1]
  assert final['step'] == 8 and final['eval_accuracy'] > 0.2  # Chance is 0.1.
  assert (tmp_path / 'checkpoints' / '8').is_dir()
  # What the metric loads: the same network, trained on [0, 1], computing on [-1, 1].
  trained = json.loads((tmp_path / 'config.json').read_text())['model']
  assert trained['name'] == 'quality_net' and trained['unit_inputs']
