"""Errors that reach the user as one line (see `main.py`), never as a traceback."""


class UserError(Exception):
  """A problem the user can fix: the message says what is wrong and what is allowed."""


class ConfigError(UserError, ValueError):
  """A config value that is out of range, of the wrong kind, or names something unknown."""


class DataError(UserError):
  """Missing or unreadable data; the message says how to get it."""


class TrainingDiverged(UserError):
  """The loss became NaN or inf; the message names the step."""


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
  """Raises the one-line ConfigError for a field whose value is not one of `allowed`."""
  if value not in allowed:
    raise ConfigError(f'{name}={value!r} is not supported; allowed: {", ".join(allowed)}')


def describe(error: BaseException) -> str:
  """'Type: the first line of its message': a library's error inside a one-line message."""
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:200]}' if lines else type(error).__name__
