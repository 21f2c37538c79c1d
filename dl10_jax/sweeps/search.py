"""Search beyond grids with Optuna: a TPE sampler, a median pruner fed by each run's evals, and a
study in a database that any number of workers on any number of machines share.

A worker (`python -m dl10_jax.sweep --search optuna`) loops: fail the trials whose worker stopped
sending heartbeats (Optuna queues each again with the same parameters), stop once `--trials`
trials are claimed and none is left running or waiting, else run one trial. A trial is the
config's `get_search(trial)` overrides run as a sweep point (runner.py) in a sub-workdir named
from the trial's parameters, so a retried trial resumes from its checkpoint and a finished one is
never run again. Optuna is imported only here: it is an optional dependency.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import random
import time
import warnings
from typing import Any, Callable

from dl10_jax.errors import UserError
from dl10_jax.sweeps import report
from dl10_jax.sweeps.storage import redact
from dl10_jax.sweeps.points import point_name
from dl10_jax.sweeps.runner import Spec, SweepPoint, check_finished, describe, run_point

_STATUS = {'COMPLETE': 'done', 'PRUNED': 'pruned', 'FAIL': 'failed', 'RUNNING': 'running',
           'WAITING': 'waiting'}


@dataclasses.dataclass(frozen=True)
class Options:
  trials: int  # Trials of the whole study, over all workers.
  storage: str  # SQLAlchemy URL (shown only through storage.redact); '' is WORKDIR/optuna.db.
  study_name: str
  heartbeat_interval: int  # Seconds between a running trial's heartbeats.
  grace_period: int  # Seconds without a heartbeat after which a running trial is lost.
  max_retry: int  # Times a lost trial is queued again.
  pruner_startup_trials: int  # MedianPruner: trials that finish before any is pruned...
  pruner_warmup_steps: int  # ... and steps of each trial before it can be.


class PointFailed(Exception):
  """The run of a trial exited non-zero or logged no value of the swept metric."""


class _NoTraceback(logging.Filter):
  """Optuna logs a failed trial with the traceback of its objective: for a failed run or Ctrl-C
  that is our code, not the cause; the message and the run's stderr.log say what happened."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and isinstance(record.exc_info[1], (PointFailed, KeyboardInterrupt)):
      record.exc_info, record.exc_text = None, None
    return True


def import_optuna() -> Any:
  try:
    import optuna
  except ImportError:
    raise UserError('--search optuna needs Optuna, an optional dependency: '
                    'pip install -r requirements-sweep.txt') from None
  warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)
  logging.getLogger('optuna.study._optimize').addFilter(_NoTraceback())
  return optuna


def storage_url(opts: Options, workdir: pathlib.Path) -> str:
  return opts.storage or f'sqlite:///{(workdir / "optuna.db").resolve()}'


def _retried(trials: list[Any]) -> dict[int, int]:
  """{number of a lost trial: number of the trial that retries it}."""
  from optuna.storages import RetryHeartbeatStaleTrialCallback
  return {lost: t.number for t in trials
          for lost in RetryHeartbeatStaleTrialCallback.retry_history(t)[-1:]}


def _claimed(trials: list[Any]) -> list[Any]:
  """The trials that count towards --trials: a lost trial counts once, as its retry."""
  retried = _retried(trials)
  return [t for t in trials if t.number not in retried and not t.user_attrs.get('surplus')]


def rows(study: Any, spec: Spec) -> list[dict[str, Any]]:
  """The study's trials as rows of the sweep summary."""
  trials = study.get_trials(deepcopy=False)
  retried = _retried(trials)
  out = []
  for t in trials:
    if t.user_attrs.get('surplus'):
      continue
    curve = sorted(t.intermediate_values.items())
    best = None
    for step, value in curve:
      if best is None or spec.better(value, best[1]):
        best = (step, value)
    error = t.user_attrs.get('error', '')
    if t.number in retried:
      error = f'stopped with its worker; retried as trial {retried[t.number]}'
    out.append({'name': f'{t.number}:{t.user_attrs.get("point", "")}', 'overrides': t.params,
                'status': _STATUS[t.state.name], 'error': error,
                'final': t.user_attrs.get('final', {}), 'curve': curve,
                'best': best and best[1], 'best_step': best and best[0],
                'wall_s': t.user_attrs.get('wall_s', 0.0)})
  return out


def run_search(spec: Spec, workdir: pathlib.Path, get_search: Callable[[Any], Any],
               check: Callable[[Any], dict[str, Any]], opts: Options) -> list[dict[str, Any]]:
  """Runs trials of the study until it has `opts.trials`; returns the summary rows.

  `check(overrides)` validates what get_search returned (a UserError stops the worker).
  """
  optuna = import_optuna()
  from optuna.storages import RetryHeartbeatStaleTrialCallback

  retry = RetryHeartbeatStaleTrialCallback(max_retry=opts.max_retry)
  study = _open_study(optuna, spec, workdir, opts, retry)
  summary = report.Summary(workdir, spec, f'Optuna study {opts.study_name!r}: {spec.config}')
  _Worker(optuna, study, retry, spec, workdir, get_search, check, opts).run(summary)
  summary.write(rows(study, spec), last=True)
  return rows(study, spec)


def _open_study(optuna: Any, spec: Spec, workdir: pathlib.Path, opts: Options,
                retry: Any) -> Any:
  """The study in `opts.storage`, created by the first worker, loaded by the others."""
  import sqlalchemy.exc
  from optuna.storages import RDBStorage

  url = storage_url(opts, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  direction = 'minimize' if spec.mode == 'min' else 'maximize'
  for attempt in range(5):  # Workers that start together race to create the tables (optuna#1092).
    try:
      storage = RDBStorage(
          url, engine_kwargs=({'connect_args': {'timeout': 60}} if url.startswith('sqlite')
                              else None),
          heartbeat_interval=opts.heartbeat_interval, grace_period=opts.grace_period,
          heartbeat_stale_trial_callback=retry)
      study = optuna.create_study(
          storage=storage, study_name=opts.study_name, direction=direction, load_if_exists=True,
          sampler=optuna.samplers.TPESampler(),
          pruner=optuna.pruners.MedianPruner(opts.pruner_startup_trials, opts.pruner_warmup_steps))
      break
    except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.ArgumentError, ImportError) as e:
      if attempt == 4 or not isinstance(e, sqlalchemy.exc.DBAPIError):
        message = redact(str(e).strip().splitlines()[0])
        raise UserError(f'cannot use the study storage {redact(url)!r}: {message}') from None
      time.sleep(0.5 + random.random())
  created = study.direction.name.lower()
  if created != direction:
    raise UserError(f'study {opts.study_name!r} in {redact(url)} was created to {created} its '
                    f'metric, not to {direction} {spec.metric}; use another --study_name')
  return study


class _Worker:
  """One worker of a study: runs its trials, one sweep point each, until the study has enough."""

  def __init__(self, optuna: Any, study: Any, retry: Any, spec: Spec, workdir: pathlib.Path,
               get_search: Callable[[Any], Any], check: Callable[[Any], dict[str, Any]],
               opts: Options):
    self.optuna, self.study, self.retry, self.spec, self.workdir = (optuna, study, retry, spec,
                                                                    workdir)
    self.get_search, self.check, self.opts = get_search, check, opts
    self.current: int | None = None  # The number of the trial this worker runs.

  def run(self, summary: report.Summary) -> None:
    """Loops: fail the lost trials (Optuna queues a retry of each), stop once the study has its
    trials and none is left running or waiting, else run one trial."""
    from optuna.trial import TrialState
    waiting_said = False
    try:
      while True:
        self.optuna.storages.fail_stale_trials(self.study)
        trials = self.study.get_trials(deepcopy=False)
        states = {t.state for t in trials}
        if len(_claimed(trials)) >= self.opts.trials and TrialState.WAITING not in states:
          if TrialState.RUNNING not in states:
            break
          if not waiting_said:  # Stay: a worker that dies leaves a trial to take over.
            print('all trials claimed; waiting for the running ones (a lost one is retried here)',
                  flush=True)
            waiting_said = True
          time.sleep(self.opts.heartbeat_interval)
          continue
        self.current = None
        self.study.optimize(self.objective, n_trials=1, catch=(PointFailed,),
                            gc_after_trial=False)
        summary.write(rows(self.study, self.spec))
    except KeyboardInterrupt:  # Queue the interrupted trial again, as a lost one would be.
      frozen = [t for t in self.study.get_trials(deepcopy=False) if t.number == self.current]
      if frozen and frozen[0].state == TrialState.FAIL:
        self.retry(self.study, frozen[0])
        print(f'interrupted: trial {self.current} is queued again', flush=True)
      raise

  def objective(self, trial: Any) -> float:
    """One trial: its overrides run as a sweep point; the value is the run's final metric."""
    self.current = trial.number
    overrides = self.check(self.get_search(trial))
    history = self._claim(trial)
    name = point_name(dict(sorted(trial.params.items())))
    trial.set_user_attr('point', name)
    reported: set[int] = set()

    def on_eval(step: int, value: float) -> bool:
      if step not in reported:
        reported.add(step)
        trial.report(value, step)
      return trial.should_prune()

    point = SweepPoint(name, overrides, self.workdir / name)
    check_finished(self.spec, [point])  # A finished run of these parameters is reused, if it fits.
    record = run_point(self.spec, point, on_eval)
    trial.set_user_attr('final', record['final'])
    trial.set_user_attr('wall_s', record['wall_s'])
    print(f'trial {trial.number}{f" (retry of {history[0]})" if history else ""} {name}: '
          f'{describe(record, self.spec.metric)}', flush=True)
    return self._value(trial, record, max(reported, default=0))

  def _claim(self, trial: Any) -> list[int]:
    """The trials `trial` retries; a new trial past the study's count is pruned unrun."""
    trials = self.study.get_trials(deepcopy=False)
    history = self.retry.retry_history(next(t for t in trials if t.number == trial.number))
    if not history and (len([t for t in _claimed(trials) if t.number < trial.number]) >=
                        self.opts.trials):
      # Another worker claimed the last trial at the same moment: this one is not run.
      trial.set_user_attr('surplus', True)
      raise self.optuna.TrialPruned(f'surplus: the study already has {self.opts.trials} trials')
    return history

  def _value(self, trial: Any, record: dict[str, Any], last_step: int) -> float:
    """The metric of a finished run; a pruned or failed run raises."""
    metric = self.spec.metric
    if record['status'] == 'pruned':
      raise self.optuna.TrialPruned(f'pruned at step {last_step}')
    if record['status'] != 'done' or metric not in record['final']:
      error = record['error'] or (f'the run logged no {metric}; logged: '
                                  f'{", ".join(record["final"]) or "nothing"}')
      trial.set_user_attr('error', error)
      raise PointFailed(error)
    return record['final'][metric]
