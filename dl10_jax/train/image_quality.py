"""Sample quality of 28x28 grey images, measured with this project's own Fashion-MNIST classifier.

NOT Inception-FID. `classifier_fid` is the Fréchet distance between Gaussians fitted to real and
generated images in the 128-d penultimate features of a small CNN trained here on Fashion-MNIST
(Inception-v3 weights need a download; this runs offline in seconds). Its numbers are comparable
only with each other (same classifier version), never with published FIDs. With it:
`classifier_confidence`, the mean max-softmax probability of the generated images (sharp,
recognisable samples score high; an Inception-Score-like signal), and `class_histogram_ratio`,
max/min frequency of their predicted classes (1 is balanced; mode collapse makes it large).

The classifier (models/quality_net.py) is trained once, seeded, by the shared loop with
configs/quality_classifier.py (89.3 % test accuracy; 2-5 minutes on 2 CPU cores), and cached in
$DL10_CACHE_DIR or ~/.cache/dl10_jax, under quality_classifier_v1/ (the weights, info.json, and
the training run in run/): by the first run or `sample --quality` that needs it, or ahead of time
with

  python -m dl10_jax.train.image_quality --train [--cache_dir DIR]

Objectives sum `moment_sums` in their `eval_step` (the trainer adds them over eval batches) and
call `summarize`; whole sets (the sample CLI) go through `score`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import shutil
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dl10_jax import runtime
from dl10_jax.data import idx
from dl10_jax.errors import ConfigError
from dl10_jax.models.quality_net import QualityNet

VERSION = 1
NOTE = ('classifier_fid is a Fréchet distance in the features of this project\'s Fashion-MNIST '
        f'classifier (v{VERSION}), not Inception-FID: compare it only with itself')
TRAIN_COMMAND = 'python -m dl10_jax.train.image_quality --train'
CONFIG = pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'quality_classifier.py'


def pixel_hashes(images: jax.Array) -> jax.Array:
  """uint32 [B]: a hash of each image's 8-bit pixels (uint32 arithmetic wraps): a seed for the
  noise of an image objective's eval that depends on the image, not on the batch it came in."""
  pixels = jnp.round(images * 255).astype(jnp.uint32).reshape(images.shape[0], -1)  # [B, HWC]
  weights = jnp.arange(1, pixels.shape[1] + 1, dtype=jnp.uint32) * jnp.uint32(2654435761)
  return (pixels * weights[None, :]).sum(axis=1)


def default_cache_dir() -> pathlib.Path:
  """Where the classifier lives: versioned, beside the project's other caches (the data dir may
  be read-only, as Debian's is)."""
  return runtime.cache_root() / f'quality_classifier_v{VERSION}'


def prepare(images: jax.Array) -> jax.Array:
  """[N, 28, 28, 1] in [-1, 1] as they are; [N, 32, 32, 1] (padded MNIST) centre-cropped to 28."""
  shape = tuple(images.shape)
  if len(shape) == 4 and shape[1:] == (32, 32, 1):
    return images[:, 2:30, 2:30]
  if len(shape) != 4 or shape[1:] != (28, 28, 1):
    raise ConfigError(f'the classifier_fid metric is for 28x28 grey images ([N, 28, 28, 1] or '
                      f'[N, 32, 32, 1], in [-1, 1]), not shape {shape}; set quality_metric=False')
  return images


@dataclasses.dataclass(frozen=True)
class FeatureClassifier:
  """The trained QualityNet: `features_and_logits` is jittable (its params become constants)."""
  params: Any
  test_accuracy: float
  version: int = VERSION

  def features_and_logits(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images float [N, 28, 28, 1] in [-1, 1] -> (features [N, F], logits [N, 10])."""
    return _apply(self.params, prepare(images))


@jax.jit
def _apply(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  return QualityNet().apply({'params': params}, images.astype(jnp.float32), with_features=True)


def load_feature_classifier(cache_dir: str | None = None) -> FeatureClassifier:
  """The cached classifier. In the default cache, the first call trains it (seeded: every machine
  gets the same one); a `cache_dir` given explicitly must hold it (a ConfigError naming the
  command that trains it otherwise: a mistyped directory should not cost a silent retraining)."""
  directory = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  info_path, params_path = directory / 'info.json', directory / 'params.msgpack'
  if not cache_dir and not info_path.is_file():
    logging.info('Training the classifier of classifier_fid once (2-5 minutes on 2 CPU cores), '
                 'into %s', directory)
    info = train_classifier()
    logging.info('classifier_fid classifier: %.2f %% test accuracy', 100 * info['test_accuracy'])
  if not (info_path.is_file() and params_path.is_file()):
    flag = f' --cache_dir {directory}' if cache_dir else ''
    raise ConfigError(f'the feature classifier of classifier_fid is not in {directory}: train it '
                      f'once with `{TRAIN_COMMAND}{flag}` (2-5 minutes on 2 CPU cores), or '
                      'set quality_metric=False')
  info = json.loads(info_path.read_text())
  if info.get('version') != VERSION:
    raise ConfigError(f'{directory} holds classifier version {info.get("version")}, not '
                      f'{VERSION}; retrain it with `{TRAIN_COMMAND}`')
  params = flax.serialization.msgpack_restore(params_path.read_bytes())
  return FeatureClassifier(jax.tree.map(jnp.asarray, params), float(info['test_accuracy']))


# --- Sums over samples, added over batches, and the metrics from them. ---

def moment_sums(features: jax.Array, logits: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Sums over the rows with mask 1 of features [N, F], logits [N, C], mask [N] (jittable)."""
  mask = mask.astype(jnp.float32)
  features = features.astype(jnp.float32) * mask[:, None]  # Masked rows become 0 everywhere.
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  predicted = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1]) * mask[:, None]
  return {
      'count': mask.sum(),
      'feature_sum': features.sum(axis=0),  # [F]
      'feature_outer': jnp.matmul(features.T, features,
                                  precision=jax.lax.Precision.HIGHEST),  # [F, F]
      'max_prob_sum': (probs.max(axis=-1) * mask).sum(),
      'class_histogram': predicted.sum(axis=0),  # [C]
  }


def _gaussian(sums: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """Mean [F] and (unbiased) covariance [F, F] in float64 from the sums."""
  n = float(sums['count'])
  if n < 2:
    raise ConfigError(f'classifier_fid needs at least 2 images per set, got {n:.0f}')
  mean = np.asarray(sums['feature_sum'], np.float64) / n
  outer = np.asarray(sums['feature_outer'], np.float64)
  cov = (outer - n * np.outer(mean, mean)) / (n - 1)
  return mean, (cov + cov.T) / 2


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray,
                     cov2: np.ndarray) -> float:
  """|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2), with tr (C1 C2)^1/2 = tr (C1^1/2 C2 C1^1/2)^1/2:
  a symmetric eigenproblem, stable where scipy's sqrtm of the non-symmetric C1 C2 is not."""
  root1 = _sqrt_psd(cov1)
  cross = np.linalg.eigvalsh(root1 @ cov2 @ root1)
  trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
  return float(np.sum((mean1 - mean2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def summarize(real_sums: dict[str, Any], fake_sums: dict[str, Any]) -> dict[str, float]:
  """classifier_fid of fakes against reals; confidence and class balance of the fakes.

  class_histogram_ratio counts an empty class as 1, so that it stays finite.
  """
  fid = frechet_distance(*_gaussian(real_sums), *_gaussian(fake_sums))
  histogram = np.asarray(fake_sums['class_histogram'], np.float64)
  return {'classifier_fid': max(fid, 0.0),
          'classifier_confidence': float(fake_sums['max_prob_sum']) / float(fake_sums['count']),
          'class_histogram_ratio': float(histogram.max() / max(histogram.min(), 1.0))}


@jax.jit
def _batch_sums(params: Any, images: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  return moment_sums(*_apply(params, prepare(images)), mask)


def set_sums(classifier: FeatureClassifier, images: np.ndarray,
             batch_size: int = 500) -> dict[str, np.ndarray]:
  """`moment_sums` of a whole set [N, H, W, 1] in [-1, 1], in fixed-size batches (one compile),
  added in float64 on the host."""
  prepare(images)  # The shape check, before any work.
  images = np.asarray(images, np.float32)
  totals: dict[str, np.ndarray] = {}
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    mask = np.zeros(batch_size, np.float32)
    mask[:len(chunk)] = 1
    chunk = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:],
                                            np.float32)])
    sums = jax.device_get(_batch_sums(classifier.params, chunk, mask))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0) + np.asarray(v, np.float64)
  return totals


def score(classifier: FeatureClassifier, fake_images: np.ndarray, real_images: np.ndarray,
          batch_size: int = 500) -> dict[str, float]:
  """The metrics of `fake_images` against `real_images`, both [N, 28, 28, 1] in [-1, 1]."""
  return summarize(set_sums(classifier, real_images, batch_size),
                   set_sums(classifier, fake_images, batch_size))


def real_images(split: str = 'test', data_dir: str = '') -> np.ndarray:
  """Fashion-MNIST `split` as float32 [N, 28, 28, 1] in [-1, 1] (offline IDX files)."""
  arrays = idx.load(idx.default_dir('fashion_mnist', data_dir), split)
  return arrays['image'].astype(np.float32) / 127.5 - 1


# --- Training the classifier (once, seeded), through the shared loop. ---

def classifier_config(num_steps: int = 1400, batch_size: int = 128, seed: int = 0,
                      learning_rate: float = 1e-3) -> ml_collections.ConfigDict:
  """configs/quality_classifier.py with these recipe fields (loaded by path: any cwd works)."""
  spec = importlib.util.spec_from_file_location('_dl10_quality_classifier_config', CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update(num_train_steps=num_steps, batch_size=batch_size, seed=seed,
                learning_rate=learning_rate, eval_every_steps=num_steps,
                checkpoint_every_steps=num_steps)
  return config


def train_classifier(cache_dir: str | None = None, num_steps: int = 1400, batch_size: int = 128,
                     seed: int = 0, learning_rate: float = 1e-3) -> dict[str, Any]:
  """Trains QualityNet on the Fashion-MNIST train split (configs/quality_classifier.py through
  the shared loop), saves its weights and info.json, returns the info.

  The default, 1400 steps of 128 (3 epochs) with Adam and a cosine decay, reached 89.3 % test
  accuracy (seed 0; 10 minutes on 2 CPU cores busy with other jobs); tests train a weak one in
  a few dozen steps. The run (checkpoints, metrics.jsonl) is kept in `run/` of the cache
  directory; a retraining starts it afresh.
  """
  # Imported here: experiment.py imports the objectives, which import this module.
  from dl10_jax.train import experiment, trainer
  directory = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  workdir = directory / 'run'
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.perf_counter()
  final = trainer.train_and_evaluate(classifier_config(num_steps, batch_size, seed, learning_rate),
                                     workdir)
  params = jax.device_get(experiment.restore_run(workdir)[1].params)
  info = {'version': VERSION, 'test_accuracy': float(final['eval_accuracy']),
          'num_steps': num_steps, 'batch_size': batch_size, 'seed': seed,
          'final_train_loss': float(final['train_loss']),  # The mean of the last log interval.
          'train_seconds': round(time.perf_counter() - start, 1), 'note': NOTE}
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'params.msgpack').write_bytes(
      flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
  (directory / 'info.json').write_text(json.dumps(info, indent=2))  # Written last: marks it done.
  return info


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--train', action='store_true', help='train and cache the classifier')
  parser.add_argument('--cache_dir', default=None, help=f'default: {default_cache_dir()}')
  parser.add_argument('--num_steps', type=int, default=1400)
  args = parser.parse_args()
  if not args.train:
    parser.error('nothing to do: pass --train')
  info = train_classifier(args.cache_dir, args.num_steps)
  print(f'test accuracy {info["test_accuracy"]:.4f} after {info["num_steps"]} steps '
        f'({info["train_seconds"]:.0f} s); saved to {args.cache_dir or default_cache_dir()}')


if __name__ == '__main__':
  main()
