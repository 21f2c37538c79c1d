"""Sweep points: grids built from axes, their directory names and their command-line overrides.

A point is a dict of config overrides, `{'learning_rate': 1e-3, 'model.width': 256}` (dotted keys
reach nested fields). Pure Python, so configs can import it without loading JAX.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from typing import Any

import ml_collections

from dl10_jax import config_lib
from dl10_jax.errors import ConfigError

Point = dict[str, Any]

_MAX_NAME = 120  # Characters of a directory name before it is shortened with a hash.
_UNSAFE = re.compile(r'[^A-Za-z0-9._,=+-]')


def _parts(name: str, grids: tuple[list[Point], ...], axes: dict[str, Any]) -> list[list[Point]]:
  """Each positional grid and each keyword axis as a list of points to combine."""
  parts = []
  for grid in grids:
    if not isinstance(grid, (list, tuple)) or not all(isinstance(p, dict) for p in grid):
      raise ConfigError(f'{name}(...): a positional argument must be a list of override dicts '
                        f'(e.g. from product or zip_), not {grid!r}')
    parts.append(list(grid))
  for key, values in axes.items():
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
      raise ConfigError(f'{name}({key}={values!r}): each axis is a list of values, e.g. '
                        f'{key}=[{values!r}]')
    parts.append([{key: v} for v in values])
  return parts


def _merge(points: tuple[Point, ...]) -> Point:
  merged: Point = {}
  for point in points:
    merged.update(point)
  return merged


def product(*grids: list[Point], **axes: Any) -> list[Point]:
  """Every combination of the axes (the first varies slowest), e.g.

    product(learning_rate=[1e-3, 3e-3], batch_size=[64, 128])  # 4 points
    product(zip_(**{'model.width': [128, 256], 'model.num_heads': [2, 4]}), learning_rate=[1e-3])

  Dotted keys need the ** form. Positional arguments are lists of points combined like axes.
  """
  return [_merge(combo) for combo in itertools.product(*_parts('product', grids, axes))]


def zip_(*grids: list[Point], **axes: Any) -> list[Point]:
  """The i-th values of every axis together: zip_(learning_rate=[1e-3, 3e-3], warmup_steps=[0, 50])
  gives 2 points. All axes must have the same length."""
  parts = _parts('zip_', grids, axes)
  if len({len(p) for p in parts}) > 1:
    lengths = ', '.join(str(len(p)) for p in parts)
    raise ConfigError(f'zip_(...): every axis must have the same length, not {lengths}')
  return [_merge(combo) for combo in zip(*parts)]


def check_points(points: Any, source: str) -> list[Point]:
  """`points` as a list of override dicts with string keys, each point once."""
  if not isinstance(points, (list, tuple)) or not points:
    raise ConfigError(f'{source} must return a non-empty list of override dicts, not {points!r}')
  seen: dict[str, int] = {}
  for i, point in enumerate(points):
    if not isinstance(point, dict) or not all(isinstance(k, str) and k for k in point):
      raise ConfigError(f'{source}: point {i} must be a dict of field names to values, not '
                        f'{point!r}')
    key = json.dumps(point, sort_keys=True, default=repr)
    if key in seen:
      raise ConfigError(f'{source}: points {seen[key]} and {i} are the same overrides {point}')
    seen[key] = i
  return list(points)


def check_fields(config: ml_collections.ConfigDict, keys: list[str], source: str) -> None:
  """Raises a ConfigError naming the first dotted key that is no field of `config`."""
  for key in keys:
    unknown = config_lib.unknown_field(config, key)
    if unknown:
      raise ConfigError(f'{source} overrides unknown field {unknown[0]!r}; {unknown[1]}')


def format_value(value: Any) -> str:
  """A value as `--config.key=VALUE` parses it back (floats in their shortest exact form)."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, float):
    return repr(value)
  return str(value)


def override_args(point: Point) -> list[str]:
  """['--config.learning_rate=0.001', ...] for dl10_jax.main."""
  return [f'--config.{key}={format_value(value)}' for key, value in point.items()]


def _name_value(value: Any) -> tuple[str, bool]:
  """The value as a name shows it, and whether that is exact (long floats show 4 digits)."""
  if isinstance(value, (list, tuple)):
    parts = [_name_value(v) for v in value]
    return 'x'.join(p for p, _ in parts), all(exact for _, exact in parts)
  if isinstance(value, float) and len(repr(value)) > 8:
    return f'{value:.4g}', False
  return format_value(value), True


def point_name(point: Point, keys: list[str] | None = None) -> str:
  """A readable, filesystem-safe directory name: 'learning_rate=0.001,batch_size=64'.

  Only `keys` (default: all) appear. A float longer than 8 characters shows 4 significant digits
  and the name then ends in a hash of the whole point (Optuna's 0.0013067645171826192 becomes
  'learning_rate=0.001307-3f2a9c1b'), as does a name over 120 characters; characters other than
  letters, digits and `._,=+-` become `_`.
  """
  keys = list(point) if keys is None else [k for k in keys if k in point]
  shown = {k: _name_value(point[k]) for k in keys}
  name = _UNSAFE.sub('_', ','.join(f'{k}={text}' for k, (text, _) in shown.items())) or 'base'
  if name[0] in '.-':
    name = '_' + name[1:]
  if len(name) > _MAX_NAME or not all(exact for _, exact in shown.values()):
    name = f'{name[:_MAX_NAME - 9]}-{_digest(point)}'
  return name


def _digest(point: Point) -> str:
  return hashlib.sha1(json.dumps(point, sort_keys=True, default=repr).encode()).hexdigest()[:8]


def point_names(points: list[Point]) -> list[str]:
  """Unique names for a sweep's points, from the keys whose values differ between them (a key
  every point sets to the same value says nothing about the point)."""
  keys = list(dict.fromkeys(k for p in points for k in p))
  if len(points) > 1:
    keys = [k for k in keys if len({json.dumps(p.get(k, '\0'), default=repr)
                                    for p in points}) > 1]
  names = [point_name(p, keys) for p in points]
  counts = {n: names.count(n) for n in names}
  return [f'{n}-{_digest(p)}' if counts[n] > 1 else n for n, p in zip(names, points)]
