"""What the command-line entry points (main, sweep, sample) share: one-line errors, help that exits
0, and loading a `path[:arg]` config file.

A mistake on the command line or in a config ends with `error: ...` on stderr and exit code 2, not
a traceback; the tests of every entry point check that.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Iterator, NoReturn

from absl import flags, logging

from dl10_jax.errors import ConfigError, UserError

HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull')


def fail(message: str, code: int = 2) -> NoReturn:
  """Ends the program with one `error:` line."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def parse_absl_flags(argv: list[str]) -> list[str]:
  """absl's parsing, except that asking for help is no failure (absl exits 1 after printing it)."""
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    if any(a in HELP_FLAGS for a in argv):
      sys.exit(0)
    raise


def reject_positional(argv: list[str], hint: str = '') -> None:
  """Fails on arguments that are no flags (absl passes them on to main)."""
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}{hint}')


def quiet_logging() -> None:
  """WARNING unless --verbosity is given: orbax and XLA log every save and compilation at INFO."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def one_line_errors(workdir: str | None = None) -> Iterator[None]:
  """Turns a UserError, and with `workdir` an OSError (an unusable --workdir), into one line."""
  try:
    yield
  except UserError as e:
    fail(str(e))
  except OSError as e:
    if workdir is None:
      raise
    fail(f'cannot use --workdir {workdir!r}: {e.strerror or e}')


def check_config_file(config_arg: str) -> None:
  """Raises a ConfigError unless the file of `path[:arg]` exists."""
  path = config_arg.partition(':')[0]
  if not os.path.isfile(path):
    raise ConfigError(f'config file {path!r} not found; pass an existing file such as '
                      'configs/cnn.py')


def cannot_load(config_arg: str, error: Exception) -> str:
  """The message for a config file that does not import, has no get_config or rejects its arg."""
  return f'cannot load config {config_arg!r}: {type(error).__name__}: {error}'


def load_config(config_arg: str) -> tuple[ModuleType, Any]:
  """The module of `path[:arg]` and its get_config(arg), loaded the way config_flags loads it."""
  path, _, arg = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location('_dl10_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(arg) if arg else module.get_config()
