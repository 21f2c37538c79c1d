r"""Entry point for hyperparameter sweeps: a grid from the config's get_sweep(), or an Optuna search
from its get_search(trial); each point a run of dl10_jax.main in its own sub-workdir.

  python -m dl10_jax.sweep --config configs/cnn.py --workdir runs/cnn_sweep [--parallel 2]
  python -m dl10_jax.sweep --config configs/cnn.py --workdir runs/cnn_sweep --print   # commands
  python -m dl10_jax.sweep --config configs/cnn.py --workdir runs/cnn_search --search optuna \
      --trials 20 [--storage env:STUDY_URL]   # on every worker machine, $STUDY_URL holding
      # postgresql://user:password@host/db (or $DL10_OPTUNA_STORAGE, without --storage)

Extra --config.field=value overrides apply to every point. Rerunning the same command skips the
finished points and resumes the others. Results: WORKDIR/summary.csv, summary.md, summary.png.
A mistake ends with one `error:` line (exit code 2); a sweep with failed points exits with 1.
"""

from __future__ import annotations

import pathlib
import shlex
import sys
from types import ModuleType
from typing import Any

from absl import app, flags

from dl10_jax import cli
from dl10_jax.errors import ConfigError, UserError
from dl10_jax.sweeps import points as points_lib
from dl10_jax.sweeps import report, runner, storage

_CONFIG = flags.DEFINE_string('config', None, 'Config file with get_sweep() and/or get_search('
                              'trial), e.g. configs/cnn.py; path:arg passes arg to get_config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep directory: one sub-workdir per point, '
                               'the summary files and (Optuna) the SQLite study.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Grid points run at once.')
_PRINT = flags.DEFINE_bool('print', False, 'Print the command of every grid point (for a cluster '
                           'queue) or, with --search optuna, the worker command; run nothing.')
_SEARCH = flags.DEFINE_enum('search', 'grid', ['grid', 'optuna'], 'grid: the points of '
                            'get_sweep(); optuna: trials of get_search(trial).')
_TRIALS = flags.DEFINE_integer('trials', 0, 'Optuna: trials of the whole study, all workers '
                               'together.')
_STORAGE = flags.DEFINE_string('storage', '', 'Optuna: SQLAlchemy URL of the study database, or '
                               'env:VAR for the URL in $VAR (a password stays out of the process '
                               'list; default: $DL10_OPTUNA_STORAGE, else SQLite in --workdir).')
_STUDY = flags.DEFINE_string('study_name', '', 'Optuna: study name (default: the --workdir '
                             'directory name).')
_METRIC = flags.DEFINE_string('metric', '', 'Metric to optimise (default: the config\'s '
                              'SWEEP_METRIC, else eval_loss).')
_MODE = flags.DEFINE_string('mode', '', 'min or max (default: the config\'s SWEEP_MODE, else min).')
_HEARTBEAT = flags.DEFINE_integer('heartbeat_interval', 60, 'Optuna: seconds between a running '
                                  'trial\'s heartbeats.')
_GRACE = flags.DEFINE_integer('grace_period', 180, 'Optuna: seconds without a heartbeat after '
                              'which a running trial counts as lost and is queued again.')
_MAX_RETRY = flags.DEFINE_integer('max_retry', 3, 'Optuna: times a lost trial is queued again.')
_PRUNE_TRIALS = flags.DEFINE_integer('pruner_startup_trials', 5, 'Optuna: trials that finish '
                                     'before the median pruner stops any.')
_PRUNE_STEPS = flags.DEFINE_integer('pruner_warmup_steps', 0, 'Optuna: training steps of a trial '
                                    'before it can be pruned.')
flags.mark_flags_as_required(['config', 'workdir'])

_OVERRIDES: list[str] = []  # The --config.field=value arguments, kept out of absl's parsing.


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with every failure turned into one line."""
  _OVERRIDES[:] = [a for a in argv[1:] if a.startswith('--config.')]
  for arg in _OVERRIDES:
    if '=' not in arg:
      cli.fail(f'{arg} has no value; write overrides as --config.field=value')
  try:
    return cli.parse_absl_flags([a for a in argv if a not in _OVERRIDES])
  except flags.Error as e:
    cli.fail(str(e).splitlines()[0])


def _load(config_arg: str) -> tuple[ModuleType, Any]:
  """The config module and its get_config(arg), each failure one line."""
  cli.check_config_file(config_arg)
  try:
    return cli.load_config(config_arg)
  except Exception as e:  # A config that does not import, has no get_config or rejects arg.
    raise ConfigError(cli.cannot_load(config_arg, e)) from None


def _spec(module: ModuleType) -> runner.Spec:
  metric = _METRIC.value or getattr(module, 'SWEEP_METRIC', 'eval_loss')
  mode = _MODE.value or getattr(module, 'SWEEP_MODE', 'min')
  if mode not in ('min', 'max'):
    raise ConfigError(f'mode {mode!r} is not supported; allowed: min, max (--mode or SWEEP_MODE)')
  return runner.Spec(_CONFIG.value, tuple(_OVERRIDES), metric, mode)


def _function(module: ModuleType, name: str, hint: str) -> Any:
  if not callable(getattr(module, name, None)):
    raise ConfigError(f'{_CONFIG.value.partition(":")[0]} defines no {name}(); {hint}')
  return getattr(module, name)


def _grid(module: ModuleType, config: Any, spec: runner.Spec, workdir: pathlib.Path) -> None:
  get_sweep = _function(module, 'get_sweep', 'add one returning a list of override dicts (see '
                        'dl10_jax/sweeps), or use --search optuna with get_search(trial)')
  try:
    grid = get_sweep()
  except UserError:
    raise
  except Exception as e:
    raise ConfigError(f'get_sweep() of {_CONFIG.value} failed: {type(e).__name__}: {e}') from None
  grid = points_lib.check_points(grid, 'get_sweep()')
  for i, point in enumerate(grid):
    points_lib.check_fields(config, list(point), f'get_sweep() point {i}')
    _check_not_swept(point)
  sweep = [runner.SweepPoint(name, point, workdir / name)
           for name, point in zip(points_lib.point_names(grid), grid)]
  if _PRINT.value:
    for point in sweep:
      print(shlex.join(['python', *runner.trainer_args(spec, point)]))
    return
  if _PARALLEL.value < 1:
    raise ConfigError(f'--parallel={_PARALLEL.value} must be >= 1')
  runner.check_finished(spec, sweep)
  summary = report.Summary(workdir, spec, 'Sweep of ' + ' '.join([spec.config, *spec.extra_args]))

  def write(running: set[str], last: bool) -> None:
    rows = [runner.point_status(spec, p) for p in sweep]
    for row in rows:
      row['status'] = 'running' if row['name'] in running else row['status']
    summary.write(rows, last)

  runner.run_grid(spec, sweep, _PARALLEL.value, write)
  rows = [runner.point_status(spec, p) for p in sweep]
  failed = [r['name'] for r in rows if r['status'] != 'done']
  print(f'summary: {workdir / "summary.md"}', flush=True)
  if failed:
    print(f'{len(failed)} of {len(rows)} points not done: {", ".join(failed)}', file=sys.stderr)
    sys.exit(1)


def _check_not_swept(point: dict[str, Any]) -> None:
  """An override for every point must not silently replace a value the sweep sets."""
  for arg in _OVERRIDES:
    key = arg[len('--config.'):].split('=', 1)[0]
    if key in point:
      raise ConfigError(f'{arg} overrides {key!r}, which the points of the sweep set; drop it '
                        'or change the sweep')


def _optuna(module: ModuleType, config: Any, spec: runner.Spec, workdir: pathlib.Path) -> None:
  from dl10_jax.sweeps import search  # Imports optuna only when it runs.

  get_search = _function(module, 'get_search', 'add one that returns an override dict from '
                         'trial.suggest_* calls')
  if _TRIALS.value < 1:
    raise ConfigError(f'--trials={_TRIALS.value} must be >= 1 with --search optuna')
  for name, flag in (('heartbeat_interval', _HEARTBEAT), ('grace_period', _GRACE)):
    if flag.value < 1:
      raise ConfigError(f'--{name}={flag.value} must be >= 1 (seconds)')
  warning = storage.warn_if_visible(_STORAGE.value)
  if warning:
    print(warning, file=sys.stderr, flush=True)
  url = storage.resolve(_STORAGE.value)
  opts = search.Options(_TRIALS.value, url, _STUDY.value or workdir.resolve().name,
                        _HEARTBEAT.value, _GRACE.value, _MAX_RETRY.value, _PRUNE_TRIALS.value,
                        _PRUNE_STEPS.value)
  if _PRINT.value:
    print(shlex.join(['python', '-m', 'dl10_jax.sweep', '--config', spec.config, '--workdir',
                      str(workdir), '--search', 'optuna', '--trials', str(opts.trials),
                      '--storage', (storage.worker_arg(_STORAGE.value, url) or
                                    search.storage_url(opts, workdir)), '--study_name',
                      opts.study_name, *spec.extra_args]))
    return

  def check(overrides: Any) -> dict[str, Any]:
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
      raise ConfigError(f'get_search(trial) must return a dict of field names to values, not '
                        f'{overrides!r}')
    points_lib.check_fields(config, list(overrides), 'get_search(trial)')
    _check_not_swept(overrides)
    return overrides

  def suggest(trial: Any) -> Any:
    try:
      return get_search(trial)
    except Exception as e:
      if type(e).__name__ == 'TrialPruned':
        raise
      raise ConfigError(f'get_search(trial) of {spec.config} failed: {type(e).__name__}: '
                        f'{e}') from None

  search.run_search(spec, workdir, suggest, check, opts)
  print(f'summary: {workdir / "summary.md"}', flush=True)


def main(argv: list[str]) -> None:
  cli.reject_positional(argv, '; every setting is a --flag or --config.field=value')
  workdir = pathlib.Path(_WORKDIR.value)
  try:
    with cli.one_line_errors(_WORKDIR.value):
      module, config = _load(_CONFIG.value)
      points_lib.check_fields(config, [a[len('--config.'):].split('=', 1)[0] for a in _OVERRIDES],
                              'the command line')
      spec = _spec(module)
      (_optuna if _SEARCH.value == 'optuna' else _grid)(module, config, spec, workdir)
  except KeyboardInterrupt:
    cli.fail('interrupted; the same command resumes the sweep', 130)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
