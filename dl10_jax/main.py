"""Entry point: flags -> config -> trainer.

  python -m dl10_jax.main --config configs/cnn.py --workdir runs/cnn [--config.key=value ...]
  python -m dl10_jax.main --config configs/cnn.py:smoke --workdir /tmp/smoke

A mistake in the command line or the config ends with one line naming the bad value and what is
allowed (exit code 2), not a traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dl10_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/cnn.py (configs/cnn.py:smoke passes '
    '"smoke" to get_config). Override any field with --config.field=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl and '
                               'TensorBoard files; rerunning in the same directory resumes.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _explain_override(argv: list[str]) -> str | None:
  """Names the first --config.a.b override whose path does not exist in the loaded config."""
  config = _CONFIG.value
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0].split('.')
    node = config
    for depth, key in enumerate(path):
      if not hasattr(node, 'keys') or key not in node:
        where = '.'.join(['config'] + path[:depth])
        allowed = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else '(not a sub-config)'
        return f'unknown field {".".join(path[:depth + 1])!r} in {arg}; fields of {where}: {allowed}'
      node = node[key]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with every failure turned into one line."""
  config_arg = next((a.split('=', 1)[1] if '=' in a else None
                     for a in argv if a.startswith('--config=')), None)
  if config_arg is None and '--config' in argv[:-1]:
    config_arg = argv[argv.index('--config') + 1]
  if config_arg is not None:
    path = config_arg.split(':', 1)[0]
    if not os.path.isfile(path):
      _fail(f'config file {path!r} not found; pass an existing file such as configs/cnn.py')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError):  # ml_collections: an override names a field that is absent.
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv[:1] + [a for a in argv[1:] if not a.startswith('--config.')])
    _fail(_explain_override(argv) or f'bad --config override in {" ".join(argv[1:])}')
  except Exception as e:  # Errors raised while importing or running the config file itself.
    _fail(f'cannot load config {config_arg!r}: {type(e).__name__}: {e}')
  return []


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; every setting is a --config.field=value override')
  if not flags.FLAGS['verbosity'].present:  # orbax and XLA log every save at INFO.
    logging.set_verbosity(logging.WARNING)
  from dl10_jax.train.trainer import train_and_evaluate  # Heavy imports after flag parsing.
  try:
    metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    _fail(str(e))
  logging.info('Final metrics: %s', metrics)
  print(' '.join(f'{k}={v:.4f}' for k, v in sorted(metrics.items())))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
