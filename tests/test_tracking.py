"""Experiment tracking beyond TensorBoard, and secrets: W&B (in its offline mode, no network) logs
what metrics.jsonl logs and a resumed run continues its W&B run; no API key or database password
reaches a file, a log line, a summary or a process's arguments.
"""

import json
import logging
import os
import pathlib
import subprocess
import sys
import time

import pytest

from conftest import ROOT, read_metrics, run_main
from dl10_jax.sweeps import storage

KEY = 'sentinelapikey0123456789'  # Stands for $WANDB_API_KEY.
PASSWORD = 'sentinelpassword9876'  # Stands for the password in an Optuna storage URL.
_WANDB = ['--config.wandb.project=dl10-tests', '--config.wandb.mode=offline',
          '--config.wandb.tags=smoke,test']


def _offline_env(monkeypatch: pytest.MonkeyPatch, wandb_dir: pathlib.Path) -> None:
  """W&B offline (it then never touches the network), its files under the test's directory."""
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_DIR', str(wandb_dir))
  monkeypatch.setenv('WANDB_SILENT', 'true')
  monkeypatch.setenv('WANDB_CONSOLE', 'off')  # Leaves sys.stdout to the test's capture.
  monkeypatch.setenv('WANDB_API_KEY', KEY)
  monkeypatch.setenv(storage.STORAGE_ENV, f'postgresql://user:{PASSWORD}@db.invalid/optuna')


def wandb_history(run_file: pathlib.Path) -> tuple[str, dict[int, dict[str, float]], bool]:
  """The run id, {step: metrics} and whether the run ended, from an offline run's .wandb file: a
  LevelDB-style log (7-byte header, 32 KiB blocks of records: crc32, length, type) of protobuf
  `Record`s."""
  from wandb.proto import wandb_internal_pb2
  data, pos, block, chunk = run_file.read_bytes(), 7, 32768, b''
  run_id, history, ended = '', {}, False
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # A block's tail too short for a header is padding.
      pos += block - pos % block
      continue
    length, kind = int.from_bytes(data[pos + 4:pos + 6], 'little'), data[pos + 6]
    if pos + 7 + length > len(data):  # Still being written.
      break
    chunk += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind not in (1, 4):  # FULL or LAST ends a record; FIRST and MIDDLE continue it.
      continue
    record = wandb_internal_pb2.Record()
    record.ParseFromString(chunk)
    chunk = b''
    ended = ended or record.WhichOneof('record_type') == 'exit'
    if record.WhichOneof('record_type') == 'run':
      run_id = record.run.run_id
    elif record.WhichOneof('record_type') == 'history':
      history.setdefault(record.history.step.num, {}).update(
          {key: json.loads(i.value_json) for i in record.history.item
           if not (key := i.key or '.'.join(i.nested_key)).startswith('_')})
  return run_id, history, ended


@pytest.fixture(scope='module')
def tracked(tmp_path_factory):
  """A CNN smoke run with W&B offline to step 8, then resumed to 16 (one process, both runs), with
  a sentinel API key and storage password in the environment; its workdir, W&B dir and output."""
  pytest.importorskip('wandb')  # requirements-dev.txt installs it.
  tmp = tmp_path_factory.mktemp('tracked')
  workdir, wandb_dir = tmp / 'run', tmp / 'wandb'
  output = []
  with pytest.MonkeyPatch.context() as monkeypatch:
    _offline_env(monkeypatch, wandb_dir)
    handler = _Capture()
    logging.getLogger().addHandler(handler)
    try:
      for steps, run_id in ((8, None), (16, 'same')):
        result = run_main('--config', 'configs/cnn.py:smoke', '--workdir', str(workdir),
                          f'--config.num_train_steps={steps}', *_WANDB)
        assert result.returncode == 0, result.stderr[-3000:]
        output += [result.stdout, result.stderr]
        if run_id is None:
          first_id = (workdir / 'wandb_run_id').read_text().strip()
    finally:
      logging.getLogger().removeHandler(handler)
  return {'workdir': workdir, 'wandb_dir': wandb_dir, 'first_id': first_id,
          'runs': _ended_runs(wandb_dir, 2), 'output': '\n'.join(output + handler.lines)}


class _Capture(logging.Handler):
  def __init__(self):
    super().__init__(logging.DEBUG)
    self.lines = []

  def emit(self, record: logging.LogRecord) -> None:
    self.lines.append(self.format(record))


def _ended_runs(wandb_dir: pathlib.Path, count: int, timeout: float = 30.0) -> list[tuple]:
  """wandb_history of the `count` offline runs, oldest first, once each file holds its end
  (wandb's own process writes them after `finish` returns)."""
  deadline = time.monotonic() + timeout
  while True:
    files = sorted(wandb_dir.glob('wandb/offline-run-*/run-*.wandb'), key=lambda p: p.parent.name)
    runs = [wandb_history(f) for f in files]
    if len(runs) == count and all(ended for *_, ended in runs):
      return runs
    assert time.monotonic() < deadline, f'{len(runs)} W&B runs, ended: {[r[2] for r in runs]}'
    time.sleep(0.2)


@pytest.mark.slow
def test_wandb_logs_what_metrics_jsonl_logs_and_a_resume_continues_the_run(tracked):
  (first_id, first, _), (second_id, second, _) = tracked['runs']
  assert first_id == second_id == tracked['first_id']  # The resumed run is the same W&B run.
  assert (tracked['workdir'] / 'wandb_run_id').read_text().strip() == tracked['first_id']
  assert max(first) == 8 and min(second) == 12  # The second run went on from the checkpoint.
  logged = {**first, **second}
  events = read_metrics(tracked['workdir'])
  assert max(logged) == 16 and max(e['step'] for e in events) == 16
  for event in events:
    for key, value in event.items():
      if key != 'step':
        assert logged[event['step']][key] == pytest.approx(value), (event['step'], key)
  assert {e['step'] for e in events} == set(logged)


@pytest.mark.slow
def test_no_secret_reaches_a_file_or_the_output_of_a_tracked_run(tracked):
  config = json.loads((tracked['workdir'] / 'config.json').read_text())
  assert config['wandb']['project'] == 'dl10-tests'
  for path in [*tracked['workdir'].rglob('*'), *tracked['wandb_dir'].rglob('*')]:
    if path.is_file():
      data = path.read_bytes()
      assert KEY.encode() not in data and PASSWORD.encode() not in data, path
  assert KEY not in tracked['output'] and PASSWORD not in tracked['output']


def test_wandb_not_installed_is_one_line_naming_the_pip_command(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # find_spec and import then fail, as uninstalled.
  result = run_main('--config', 'configs/cnn.py:smoke', '--workdir', str(tmp_path),
                    '--config.wandb.project=x')
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: wandb.project='x' needs wandb, which is not installed: "
                                   'pip install wandb==0.31.0 (or leave wandb.project empty)')


def test_a_bad_wandb_mode_is_one_line(tmp_path):
  result = run_main('--config', 'configs/cnn.py:smoke', '--workdir', str(tmp_path),
                    '--config.wandb.mode=online-ish')
  assert result.returncode == 2
  assert "wandb.mode='online-ish' is not supported; allowed: online, offline, disabled" in (
      result.stderr)


@pytest.mark.parametrize('text, expected', [
    ('postgresql://user:pw@host:5432/db', 'postgresql://user:***@host:5432/db'),
    ("cannot use 'mysql+pymysql://u:p@ss@h/db': no", "cannot use 'mysql+pymysql://u:***@h/db': no"),
    ('postgresql://user@host/db and sqlite:////tmp/x.db', None),  # No password: unchanged.
])
def test_redact_hides_the_password_of_every_url(text, expected):
  assert storage.redact(text) == (expected or text)


def _sweep(*args: str, env: dict) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'dl10_jax.sweep', '--config', 'configs/cnn.py',
                         '--search', 'optuna', '--trials', '2', *args], cwd=ROOT,
                        env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_the_storage_password_stays_out_of_sweep_commands_and_errors(tmp_path):
  url = f'postgresql://user:{PASSWORD}@db.invalid/optuna'
  workdir = ['--workdir', str(tmp_path / 'search')]
  from_env = _sweep(*workdir, '--print', env={storage.STORAGE_ENV: url})
  assert from_env.returncode == 0, from_env.stderr
  assert '--storage env:DL10_OPTUNA_STORAGE' in from_env.stdout
  typed = _sweep(*workdir, '--print', '--storage', url, env={})
  assert '--storage env:DL10_OPTUNA_STORAGE' in typed.stdout
  assert 'puts a password in the process list' in typed.stderr
  broken = _sweep(*workdir, '--storage', 'env:STUDY_URL',
                  env={'STUDY_URL': url.replace('postgresql', 'postgresql+nodriver')})
  assert broken.returncode == 2
  assert broken.stderr.startswith("error: cannot use the study storage 'postgresql+nodriver://"
                                  "user:***@db.invalid/optuna'")
  for result in (from_env, typed, broken):
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:os.fork')  # The runner's fork execs at once.
def test_an_optuna_worker_passes_no_secret_to_its_runs_arguments_or_summaries(tmp_path,
                                                                             monkeypatch, capsys):
  from dl10_jax.sweeps import runner, search
  _offline_env(monkeypatch, tmp_path / 'wandb')
  monkeypatch.setenv(runner.TRAINER_ENV, 'tests.sweep_fake_trainer')
  monkeypatch.setenv('FAKE_STEP_S', '0.01')
  monkeypatch.setenv('PYTHONPATH', str(ROOT))
  launched = []
  popen = subprocess.Popen

  def spy(args, **kwargs):
    launched.append((list(args), kwargs.get('env')))
    return popen(args, **kwargs)

  monkeypatch.setattr(runner.subprocess, 'Popen', spy)
  workdir = tmp_path / 'search'
  spec = runner.Spec('configs/cnn.py', ('--config.num_train_steps=3',), 'eval_loss', 'min')
  opts = search.Options(1, '', 'tracking', 60, 180, 0, 5, 0)
  search.run_search(spec, workdir, lambda t: {'learning_rate': t.suggest_float('lr', 1e-4, 1e-2)},
                    lambda o: o, opts)
  (args, env), = launched
  assert env is None  # The run inherits the environment: secrets travel there, ...
  assert KEY not in ' '.join(args) and PASSWORD not in ' '.join(args)  # ... never in its arguments.
  for path in workdir.rglob('*'):
    if path.is_file() and path.suffix != '.db':
      assert PASSWORD.encode() not in path.read_bytes() and KEY.encode() not in path.read_bytes()
  out = capsys.readouterr()
  assert 'trial 0' in out.out and PASSWORD not in out.out + out.err and KEY not in out.out + out.err
