"""Samples from a trained run: text from language models, images from image generators.

  python -m dl10_jax.sample --workdir runs/gpt --prompt 'ROMEO:' --max_new_tokens 500 \
      --temperature 0.8 --top_k 40 --seed 0 [--num_samples 2] > out.txt
  python -m dl10_jax.sample --workdir runs/gan --num_samples 10000 --out grid.png \
      [--npz samples.npz] [--sampler ddim --steps 50 --eta 0] [--quality]

Reads the run's config.json, tokenizer and newest checkpoint. Text samples go to stdout (separated
by a line of dashes when there are several), logs and the sampling speed to stderr. Image runs
(an objective with `generate`: gan, diffusion) write a PNG grid of the first samples (at most 256),
all samples to --npz (float32 [N, H, W, C] in [-1, 1]), and with --quality print classifier_fid
against the test split (this project's Fashion-MNIST classifier, NOT Inception-FID). --sampler,
--steps and --eta go to the objective's `generate` only where given.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
from absl import app, flags, logging

from dl10_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of a trained run.')
_PROMPT = flags.DEFINE_string('prompt', '\n', 'Text to continue.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 500, 'Tokens to generate per sample.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'Softmax temperature; 0 decodes greedily.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample from the k most likely tokens only (0: all).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Sample from the smallest set of tokens whose '
                            'probability reaches p (1: all).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', None, 'Samples (text: 1 by default, generated '
                                     'as one batch; images: 64 by default).')
_SPEED = flags.DEFINE_bool('report_speed', False, 'Sample twice and report the speed of the '
                           'second (compiled) call in tokens/s.')
_OUT = flags.DEFINE_string('out', None, 'Images: the PNG grid to write (required).')
_NPZ = flags.DEFINE_string('npz', None, 'Images: also save every sample to this .npz ("images").')
_SAMPLER = flags.DEFINE_string('sampler', None, 'Images: the sampler (diffusion: ddpm | ddim).')
_STEPS = flags.DEFINE_integer('steps', None, 'Images: sampling steps (diffusion).')
_ETA = flags.DEFINE_float('eta', None, 'Images: DDIM noise scale (0: deterministic).')
_QUALITY = flags.DEFINE_bool('quality', False, 'Images: print classifier_fid, confidence and class '
                             'balance of the samples against the test split (not Inception-FID).')
_BATCH = flags.DEFINE_integer('batch_size', 500, 'Images: samples generated per call.')
flags.mark_flag_as_required('workdir')
GRID_MAX = 256  # Samples shown in the PNG grid (a 16x16 grid at most).


def _check(checks: tuple[tuple[str, Any, bool, str], ...]) -> None:
  """One line for the first flag out of range: (name, value, ok, what is allowed)."""
  from dl10_jax.errors import ConfigError
  for name, value, ok, allowed in checks:
    if not ok:
      raise ConfigError(f'--{name}={value} must be {allowed}')


def check_text_flags() -> None:
  num_samples = _NUM_SAMPLES.value or 1
  _check((('max_new_tokens', _MAX_NEW.value, _MAX_NEW.value >= 1, '>= 1'),
          ('temperature', _TEMPERATURE.value, _TEMPERATURE.value >= 0, '>= 0'),
          ('top_k', _TOP_K.value, _TOP_K.value >= 0, '>= 0'),
          ('top_p', _TOP_P.value, 0 < _TOP_P.value <= 1, 'in (0, 1]'),
          ('num_samples', num_samples, num_samples >= 1, '>= 1')))


def check_image_flags(workdir: str) -> None:
  from dl10_jax.errors import ConfigError
  num_samples = 64 if _NUM_SAMPLES.value is None else _NUM_SAMPLES.value
  _check((('num_samples', num_samples, num_samples >= 1, '>= 1'),
          ('batch_size', _BATCH.value, _BATCH.value >= 1, '>= 1')))
  if not _OUT.value:
    raise ConfigError(f'the run in {workdir} generates images: pass --out grid.png')


def sample_text(exp: Any, state: Any) -> list[str]:
  """The samples the flags ask for, from a restored language-model run."""
  import jax
  import jax.numpy as jnp

  from dl10_jax.models import decoding as sampling
  from dl10_jax.errors import ConfigError

  tokenizer = exp.splits.tokenizer
  unknown = tokenizer.unknown(_PROMPT.value)
  if unknown:
    raise ConfigError(f'the prompt has characters outside the vocabulary of this run: '
                      f'{"".join(unknown)!r}; remove them')
  prompt = tokenizer.encode(_PROMPT.value)
  if not len(prompt):
    raise ConfigError('--prompt is empty after tokenization; give at least one token')
  kwargs = dict(max_new_tokens=_MAX_NEW.value, num_samples=_NUM_SAMPLES.value or 1,
                temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
                seed=_SEED.value)
  run = lambda: jax.block_until_ready(sampling.generate(
      exp.objective.model, state.params, jnp.asarray(prompt), **kwargs))
  start = time.perf_counter()
  tokens = run()
  seconds = time.perf_counter() - start
  if _SPEED.value:
    first, start = seconds, time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - start
    logging.warning('sampled %d x %d tokens at %.0f tokens/s (first call, with compilation: '
                    '%.1f s)', tokens.shape[0], tokens.shape[1], tokens.size / seconds, first)
  return [_PROMPT.value + tokenizer.decode(row) for row in jax.device_get(tokens)]


def dataset_images(source: Any, preprocess: Callable[[Any], Any]) -> np.ndarray:
  """Every image of a source as float32 [N, H, W, C] in [-1, 1]."""
  from dl10_jax.data import sources
  batch = preprocess(sources.read_batch(source, np.arange(len(source))))
  return np.asarray(batch['image'], np.float32) * 2 - 1


def sample_images(exp: Any, state: Any) -> list[str]:
  """Generates the samples the flags ask for in batches, writes the grid (and npz); returns the
  lines to print: where they went, and the quality metrics if asked for."""
  import jax

  from dl10_jax.data import image_grid, sources
  from dl10_jax.train import image_quality

  num_samples = 64 if _NUM_SAMPLES.value is None else _NUM_SAMPLES.value
  # Only the options given: the objective's own defaults for the rest (a GAN takes none).
  sampler_kwargs = {name: flag.value for name, flag in
                    (('sampler', _SAMPLER), ('steps', _STEPS), ('eta', _ETA))
                    if flag.value is not None}
  if _QUALITY.value:  # Before generating: a missing classifier or unfit data fails at once.
    classifier = image_quality.load_feature_classifier(
        exp.config.get('quality_classifier_dir') or None)
    test = sources.load_images(exp.config.dataset).eval  # The whole test split.
    real = dataset_images(test, exp.splits.preprocess)
    image_quality.prepare(real)
  batch = min(_BATCH.value, num_samples)
  rng = jax.random.PRNGKey(_SEED.value)
  chunks = []
  for i in range(-(-num_samples // batch)):  # Full batches only: one compilation.
    images = exp.objective.generate(state, jax.random.fold_in(rng, i), batch, **sampler_kwargs)
    chunks.append(np.asarray(jax.device_get(images), np.float32))
  images = np.concatenate(chunks)[:num_samples]  # [N, H, W, C] in [-1, 1]
  shown = images[:GRID_MAX]
  image_grid.save_png(_OUT.value, image_grid.make_grid(shown, math.ceil(len(shown) ** 0.5)),
                      scale=2)
  lines = [f'wrote a grid of {len(shown)} of {num_samples} samples to {_OUT.value}']
  if _NPZ.value:
    np.savez_compressed(_NPZ.value, images=images)
    lines.append(f'wrote {num_samples} samples to {_NPZ.value} (images: float32 '
                 f'{list(images.shape)} in [-1, 1])')
  if _QUALITY.value:
    metrics = image_quality.score(classifier, images, real)
    lines.append(' '.join(f'{k}={v:.4f}' for k, v in metrics.items()) +
                 f' ({num_samples} samples vs {len(real)} test images)')
    lines.append(f'note: {image_quality.NOTE}')
  return lines


def _check_flags(objective: str) -> str:
  """What the run samples ('text' or 'images'), with the flags that matter for it checked."""
  from dl10_jax.errors import ConfigError
  from dl10_jax.train import OBJECTIVES
  cls = OBJECTIVES.get(objective)
  kind = cls.samples if cls else None
  if kind == 'text':
    check_text_flags()
  elif kind == 'images':
    check_image_flags(_WORKDIR.value)
  else:
    samplers = ', '.join(name for name, cls in OBJECTIVES.items() if cls.samples)
    raise ConfigError(f'the run in {_WORKDIR.value} has objective {objective!r}; sampling '
                      f'supports {samplers}')
  return kind


def main(argv: list[str]) -> None:
  cli.reject_positional(argv)
  cli.quiet_logging()
  import jax

  from dl10_jax.train.experiment import restore_run, run_config
  with cli.one_line_errors():
    # What the run is decides which flags matter; they are checked before the slow restore.
    kind = _check_flags(run_config(_WORKDIR.value).objective)
    exp, state = restore_run(_WORKDIR.value, jax.devices()[:1])
    lines = sample_images(exp, state) if kind == 'images' else sample_text(exp, state)
  print('\n'.join(lines) if kind == 'images' else ('\n' + '-' * 40 + '\n').join(lines))


if __name__ == '__main__':
  app.run(main)
