"""Samples from a trained run: text from language models.

  python -m dl10_jax.sample --workdir runs/gpt --prompt 'ROMEO:' --max_new_tokens 500 \
      --temperature 0.8 --top_k 40 --seed 0 [--num_samples 2] > out.txt

Reads the run's config.json, tokenizer and newest checkpoint. The samples go to stdout (separated
by a line of dashes when there are several), logs and the sampling speed to stderr.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags, logging

from dl10_jax.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of a trained run.')
_PROMPT = flags.DEFINE_string('prompt', '\n', 'Text to continue.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 500, 'Tokens to generate per sample.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'Softmax temperature; 0 decodes greedily.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample from the k most likely tokens only (0: all).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Sample from the smallest set of tokens whose '
                            'probability reaches p (1: all).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'Samples, generated as one batch.')
_SPEED = flags.DEFINE_bool('report_speed', False, 'Sample twice and report the speed of the '
                           'second (compiled) call in tokens/s.')
flags.mark_flag_as_required('workdir')


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def sample_text(workdir: str) -> list[str]:
  """The samples the flags ask for, from the run in `workdir`."""
  import jax
  import jax.numpy as jnp

  from dl10_jax import sampling
  from dl10_jax.errors import ConfigError
  from dl10_jax.train.trainer import restore_run

  for name, value, ok, allowed in (
      ('max_new_tokens', _MAX_NEW.value, _MAX_NEW.value >= 1, '>= 1'),
      ('temperature', _TEMPERATURE.value, _TEMPERATURE.value >= 0, '>= 0'),
      ('top_k', _TOP_K.value, _TOP_K.value >= 0, '>= 0'),
      ('top_p', _TOP_P.value, 0 < _TOP_P.value <= 1, 'in (0, 1]'),
      ('num_samples', _NUM_SAMPLES.value, _NUM_SAMPLES.value >= 1, '>= 1')):
    if not ok:
      raise ConfigError(f'--{name}={value} must be {allowed}')
  exp, state = restore_run(workdir, jax.devices()[:1])
  if exp.config.objective != 'language_model':
    raise ConfigError(f'the run in {workdir} has objective {exp.config.objective!r}; sampling '
                      'supports: language_model')
  tokenizer = exp.splits.tokenizer
  unknown = tokenizer.unknown(_PROMPT.value)
  if unknown:
    raise ConfigError(f'the prompt has characters outside the vocabulary of this run: '
                      f'{"".join(unknown)!r}; remove them')
  prompt = tokenizer.encode(_PROMPT.value)
  if not len(prompt):
    raise ConfigError('--prompt is empty after tokenization; give at least one token')
  kwargs = dict(max_new_tokens=_MAX_NEW.value, num_samples=_NUM_SAMPLES.value,
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    samples = sample_text(_WORKDIR.value)
  except UserError as e:
    _fail(str(e))
  print(('\n' + '-' * 40 + '\n').join(samples))


if __name__ == '__main__':
  app.run(main)
