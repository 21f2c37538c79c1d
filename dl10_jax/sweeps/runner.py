"""One sweep point = one subprocess of dl10_jax.main in its own sub-workdir; and the grid loop.

What a point's sub-workdir holds besides the run itself (so a rerun knows where each point is):

  result.json      written only after the run exited 0: overrides, arguments, final metrics, best
                   value of the swept metric, wall time. A point with it is skipped.
  attempts.jsonl   one line per finished attempt: start time, wall time, exit code, status, error.
  stdout.log, stderr.log   the run's output, appended attempt after attempt.

A point without result.json runs again in the same directory, where dl10_jax.main resumes from the
newest checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import datetime
import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from dl10_jax.errors import ConfigError
from dl10_jax.sweeps.points import Point, override_args
from dl10_jax.sweeps.storage import redact

# Test hook: a module run instead of dl10_jax.main (tests/sweep_fake_trainer.py).
TRAINER_ENV = 'DL10_SWEEP_TRAINER'
RESULT, ATTEMPTS = 'result.json', 'attempts.jsonl'
_POLL_S = 0.5  # How often a running point's metrics.jsonl is read (for pruning).


@dataclasses.dataclass(frozen=True)
class Spec:
  """What every point of one sweep shares."""
  config: str  # path[:arg], as dl10_jax.main takes it.
  extra_args: tuple[str, ...]  # --config.key=value overrides for every point.
  metric: str  # The swept metric, a key of metrics.jsonl.
  mode: str  # 'min' or 'max'.

  def better(self, a: float, b: float) -> bool:
    return a < b if self.mode == 'min' else a > b


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  name: str
  overrides: Point
  workdir: pathlib.Path


def trainer_args(spec: Spec, point: SweepPoint) -> list[str]:
  """Everything after `python`: `-m dl10_jax.main --config ... --workdir SUB --config.k=v ...`."""
  return ['-m', os.environ.get(TRAINER_ENV, 'dl10_jax.main'), '--config', spec.config,
          '--workdir', str(point.workdir), *override_args(point.overrides), *spec.extra_args]


class MetricsTail:
  """The complete lines appended to a run's metrics.jsonl since the last read."""

  def __init__(self, path: pathlib.Path):
    self._path, self._offset = path, 0

  def read(self) -> list[dict[str, Any]]:
    try:
      with open(self._path, 'rb') as f:
        f.seek(self._offset)
        data = f.read()
    except FileNotFoundError:
      return []
    complete = data[:data.rfind(b'\n') + 1]  # A line still being written waits for the next read.
    self._offset += len(complete)
    events = []
    for line in complete.decode('utf-8', 'replace').splitlines():
      try:
        events.append(json.loads(line))
      except json.JSONDecodeError:  # A line cut short when a run was killed.
        continue
    return events


def summarize_metrics(workdir: pathlib.Path, spec: Spec) -> dict[str, Any]:
  """Final value of each train_/eval_ metric, the swept metric's curve and its best point.

  A step logged twice (a resumed run logs the steps after its checkpoint again) keeps its last
  value.
  """
  latest: dict[str, dict[int, float]] = {}
  for event in MetricsTail(workdir / 'metrics.jsonl').read():
    for key, value in event.items():
      if key != 'step' and (key.startswith(('eval_', 'train_')) or key == spec.metric):
        latest.setdefault(key, {})[int(event['step'])] = value
  final = {k: v[max(v)] for k, v in sorted(latest.items())}
  curve = sorted(latest.get(spec.metric, {}).items())
  best_step, best = None, None
  for step, value in curve:
    if best is None or spec.better(value, best):
      best_step, best = step, value
  return {'final': final, 'curve': curve, 'best': best, 'best_step': best_step}


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Readers (and other workers) never see half a file."""
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.{threading.get_ident()}.tmp')
  tmp.write_text(text)
  os.replace(tmp, path)


def attempts(workdir: pathlib.Path) -> list[dict[str, Any]]:
  path = workdir / ATTEMPTS
  return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def point_status(spec: Spec, point: SweepPoint) -> dict[str, Any]:
  """Where a point stands on disk: done, failed, pruned, interrupted (a run without a recorded
  end, e.g. a killed sweep) or pending; with its metrics so far."""
  done = _read_json(point.workdir / RESULT)
  tries = attempts(point.workdir)
  if done is not None:
    status, error = 'done', ''
  elif tries:
    status, error = tries[-1]['status'], tries[-1].get('error', '')
  else:
    status = 'interrupted' if (point.workdir / 'metrics.jsonl').is_file() else 'pending'
    error = ''
  return {'name': point.name, 'overrides': point.overrides, 'status': status, 'error': error,
          'wall_s': sum(t['wall_s'] for t in tries), **summarize_metrics(point.workdir, spec)}


def _without_workdir(args: list[str]) -> list[str]:
  """The arguments, but not the spelling of the workdir (runs/x and ./runs/x are one sweep)."""
  i = args.index('--workdir')
  return args[:i] + args[i + 2:]


def check_finished(spec: Spec, points: list[SweepPoint]) -> None:
  """A finished point is skipped only if it was run with the arguments it would get now."""
  for point in points:
    done = _read_json(point.workdir / RESULT)
    if done is not None and (_without_workdir(done['args']) !=
                             _without_workdir(trainer_args(spec, point)[2:])):
      raise ConfigError(f'{point.workdir} finished with other arguments ({" ".join(done["args"])});'
                        ' use a new --workdir, or the arguments it was run with')


def _last_line(path: pathlib.Path, offset: int) -> str:
  """The last non-empty line written to `path` after `offset` (progress bars end lines with \\r)."""
  with open(path, 'rb') as f:
    f.seek(offset)
    text = f.read()[-20_000:].decode('utf-8', 'replace')
  lines = [line.strip() for line in text.replace('\r', '\n').splitlines() if line.strip()]
  return lines[-1] if lines else ''


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith('linux') else None


def _die_with_parent(parent: int) -> None:
  """In the child before exec (Linux): SIGKILL when the sweep dies, so that no orphaned run keeps
  writing into the sub-workdir that a retry resumes."""
  if _PRCTL is not None:
    _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # The parent died before the line above.
      os._exit(1)


def _stop(proc: subprocess.Popen) -> None:
  proc.terminate()
  try:
    proc.wait(timeout=30)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def run_point(spec: Spec, point: SweepPoint,
              on_eval: Callable[[int, float], bool] | None = None,
              stop: threading.Event | None = None) -> dict[str, Any]:
  """Runs (or resumes) a point unless it is done; returns its point_status.

  `on_eval(step, value)` sees every value of the swept metric, those of earlier attempts first;
  when it returns True the run is stopped and the point recorded as pruned. Setting `stop` stops
  the run and records it as interrupted.
  """
  tail = MetricsTail(point.workdir / 'metrics.jsonl')

  def feed() -> bool:
    prune = False
    for event in tail.read():
      if on_eval is not None and spec.metric in event:
        prune = on_eval(int(event['step']), float(event[spec.metric])) or prune
    return prune

  if (point.workdir / RESULT).is_file():
    feed()
    return point_status(spec, point)
  point.workdir.mkdir(parents=True, exist_ok=True)
  args = trainer_args(spec, point)
  started, start = datetime.datetime.now().isoformat(timespec='seconds'), time.perf_counter()
  status, returncode, error = 'pruned', None, ''
  if not feed():  # Values of an earlier attempt may already decide the pruning.
    status, returncode, error = _run_trainer(args, point.workdir, feed, stop)
  with open(point.workdir / ATTEMPTS, 'a') as f:
    f.write(json.dumps({'started': started, 'wall_s': round(time.perf_counter() - start, 3),
                        'returncode': returncode, 'status': status, 'error': error}) + '\n')
  record = point_status(spec, point)
  if status == 'done':
    write_atomic(point.workdir / RESULT, json.dumps(
        {'args': args[2:], **{k: v for k, v in record.items() if k != 'curve'}}, indent=2))
  return record


def _run_trainer(args: list[str], workdir: pathlib.Path, feed: Callable[[], bool],
                 stop: threading.Event | None) -> tuple[str, int | None, str]:
  """Runs the trainer until it ends, `feed()` asks to prune it or `stop` is set; returns the
  attempt's status (done, failed, pruned, interrupted), exit code and error line."""
  status = ''
  with open(workdir / 'stdout.log', 'ab') as out, open(workdir / 'stderr.log', 'ab') as err:
    err_offset = err.tell()
    proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL,
                            preexec_fn=functools.partial(_die_with_parent, os.getpid()))
    try:
      while status == '':
        try:
          proc.wait(timeout=_POLL_S)
          status = 'ended'
        except subprocess.TimeoutExpired:
          if feed():
            status = 'pruned'
          elif stop is not None and stop.is_set():
            status = 'interrupted'
      if proc.poll() is None:
        _stop(proc)
    except BaseException:  # Ctrl-C or an error of ours: the run must not outlive its sweep.
      _stop(proc)
      raise
  feed()
  if status == 'ended':
    status = 'done' if proc.returncode == 0 else 'failed'
  error = ''
  if status == 'failed':
    error = (redact(_last_line(workdir / 'stderr.log', err_offset)) or
             f'exit code {proc.returncode}')
  return status, proc.returncode, error


def describe(record: dict[str, Any], metric: str) -> str:
  """One line for the console: 'done in 95 s, eval_loss=0.3101 (best 0.3050 at step 938)'."""
  text = f'{record["status"]} in {record["wall_s"]:.0f} s'
  if metric in record['final']:
    text += f', {metric}={record["final"][metric]:.4f}'
    text += f' (best {record["best"]:.4f} at step {record["best_step"]})'
  if record['error']:
    text += f': {record["error"]}'
  return text


def run_grid(spec: Spec, points: list[SweepPoint], parallel: int,
             report: Callable[[set[str], bool], None]) -> list[dict[str, Any]]:
  """Runs every point that is not done, `parallel` at a time; `report(running, last)` whenever
  one starts or ends, and last=True at the end. Returns the records of the points it ran."""
  todo = [p for p in points if not (p.workdir / RESULT).is_file()]
  print(f'{len(points) - len(todo)} of {len(points)} points already done; running {len(todo)}, '
        f'{parallel} at a time', flush=True)
  running: set[str] = set()
  lock, stop = threading.Lock(), threading.Event()

  def one(point: SweepPoint) -> dict[str, Any]:
    with lock:
      running.add(point.name)
      report(set(running), False)
    try:
      return run_point(spec, point, stop=stop)
    finally:
      with lock:
        running.discard(point.name)
        report(set(running), False)

  records = []
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
  try:
    futures = {pool.submit(one, p): p for p in todo}
    for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
      record = future.result()
      records.append(record)
      print(f'[{n}/{len(todo)}] {futures[future].name}: {describe(record, spec.metric)}',
            flush=True)
  except BaseException:  # Ctrl-C: the running points stop, no new one starts.
    stop.set()
    raise
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
  report(set(), True)
  return records
