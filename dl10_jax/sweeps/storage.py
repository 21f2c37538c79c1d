"""The URL of a shared Optuna study, which may hold a database password.

A process's arguments are visible to every user of the machine (`ps`), its environment is not:
the URL can come from $DL10_OPTUNA_STORAGE or `--storage env:VAR`, and every message, log line and
summary shows it through `redact`.
"""

from __future__ import annotations

import os
import re

from dl10_jax.errors import ConfigError

STORAGE_ENV = 'DL10_OPTUNA_STORAGE'
_ENV_PREFIX = 'env:'
# scheme://user:password@ -- greedy up to the last '@' of the word, in case the password has one.
_PASSWORD = re.compile(r'\b([A-Za-z][\w+.-]*://[^:/@\s]*):\S*@')


def redact(text: str) -> str:
  """`text` with the password of each URL in it hidden: postgresql://user:***@host/db."""
  return _PASSWORD.sub(r'\1:***@', text)


def resolve(flag: str) -> str:
  """The URL that `--storage` means: itself, `env:VAR`'s value, or for '' $DL10_OPTUNA_STORAGE
  ('' when unset: SQLite in the sweep's workdir)."""
  if not flag.startswith(_ENV_PREFIX):
    return flag or os.environ.get(STORAGE_ENV, '')
  name = flag[len(_ENV_PREFIX):]
  if not os.environ.get(name):
    raise ConfigError(f'--storage={flag}: ${name} is not set; export the study URL in it')
  return os.environ[name]


def worker_arg(flag: str, url: str) -> str:
  """What `--print` shows for --storage in a worker's command: the URL only if it holds no
  password, else where the worker reads it from."""
  if flag.startswith(_ENV_PREFIX):
    return flag
  if url and (not flag or redact(url) != url):
    return _ENV_PREFIX + STORAGE_ENV
  return url


def warn_if_visible(flag: str) -> str | None:
  """The warning for a password typed on the command line, where `ps` shows it; else None."""
  if redact(flag) == flag:
    return None
  return (f'warning: --storage {redact(flag)} puts a password in the process list; export the URL '
          f'in ${STORAGE_ENV} (or --storage env:VAR) instead')
