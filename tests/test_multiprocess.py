"""A real multi-process run on this machine: two processes of 4 fake CPU devices each, meeting over
loopback through jax.distributed (gloo collectives), train like one process with 8 devices; and
what ends such a run: a preemption notice to one process, a process that dies."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import gpt as gpt_config
from conftest import ROOT, cached_compile_env, read_metrics, run_main
from dl10_jax.train.preemption import PREEMPTED_EXIT_CODE
from dl10_jax.train.trainer import KILL_AT_STEP, train_and_evaluate

STEPS = 6
OVERRIDES = dict(num_train_steps=STEPS, log_every_steps=1, eval_every_steps=STEPS,
                 checkpoint_every_steps=3, progress_bar=False)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_with_eight_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  port = _free_port()
  command = [sys.executable, '-m', 'dl10_jax.main', '--config', 'configs/gpt.py:smoke',
             '--workdir', str(tmp_path / 'two'), f'--coordinator_address=127.0.0.1:{port}',
             '--num_processes=2', *(f'--config.{k}={v}' for k, v in OVERRIDES.items())]
  procs = [subprocess.Popen([*command, f'--process_id={i}'], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=400) for p in procs]
  finally:  # Bounded in time; nothing left behind on failure.
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert 'process 1 of 2, 4 local of 8 devices' in outputs[1][1]

  config = gpt_config.get_config('smoke')
  config.update(OVERRIDES)
  one = train_and_evaluate(config, tmp_path / 'one')  # One process, the 8 devices of conftest.
  losses = lambda run: [m['train_loss'] for m in read_metrics(tmp_path / run) if 'train_loss' in m]
  assert len(losses('two')) == STEPS  # Written once, by process 0.
  np.testing.assert_allclose(losses('two'), losses('one'), rtol=2e-5)
  eval_two = [m for m in read_metrics(tmp_path / 'two') if 'eval_loss' in m][-1]['eval_loss']
  assert eval_two == pytest.approx(one['eval_loss'], rel=1e-5)
  assert sorted(p.name for p in (tmp_path / 'two' / 'checkpoints').iterdir()) == ['3', '6']


def test_distributed_flags_go_together(tmp_path):
  result = run_main('--config', 'configs/gpt.py:smoke', '--workdir', str(tmp_path),
                    '--coordinator_address=127.0.0.1:1234', '--process_id=0')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --coordinator_address, --num_processes and --process_id go together; missing '
      '--num_processes')


def _start_two(workdir: pathlib.Path, fault_in_process_1: str) -> list[subprocess.Popen]:
  """Two one-device processes of a long CNN smoke run; process 1 with DL10_KILL_AT_STEP set."""
  import jax
  env = cached_compile_env(pathlib.Path(jax.config.jax_compilation_cache_dir or 'off'),
                           one_device=True)
  command = [sys.executable, '-m', 'dl10_jax.main', '--config', 'configs/cnn.py:smoke',
             '--workdir', str(workdir), f'--coordinator_address=127.0.0.1:{_free_port()}',
             '--num_processes=2', '--config.num_train_steps=1000', '--config.log_every_steps=1',
             '--config.eval_every_steps=1000', '--config.checkpoint_every_steps=1000',
             '--config.progress_bar=False']
  return [subprocess.Popen([*command, f'--process_id={i}'], cwd=ROOT, text=True,
                           env={**env, KILL_AT_STEP: fault_in_process_1} if i else env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:  # Bounded in time; nothing left behind on failure.
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


@pytest.mark.slow
def test_sigterm_to_one_process_saves_all_at_one_step_and_a_dead_one_ends_the_other(tmp_path):
  workdir = tmp_path / 'run'
  # A preemption notice to process 1 only: jax's sync point picks one step for both.
  results = _finish(_start_two(workdir, '3:TERM'), timeout=300)
  for code, _, err in results:
    assert code == PREEMPTED_EXIT_CODE, err[-3000:]
  lines = {err.strip().splitlines()[-1] for _, _, err in results}
  [line] = lines
  step = int(line.split('step ')[1].split()[0])
  assert step > 3 and line == (f'preempted: saved the checkpoint of step {step} in {workdir}; '
                               'rerun the same command to resume')
  assert [p.name for p in (workdir / 'checkpoints').iterdir()] == [str(step)]

  # Rerun, resumed; process 1 dies (SIGKILL) a step later: process 0 ends at once, in one line.
  procs = _start_two(workdir, str(step + 1))
  (code_1, _, err_1) = _finish(procs[1:], timeout=300)[0]
  assert code_1 == -9, err_1[-3000:]
  died = time.monotonic()
  [(code_0, out_0, err_0)] = _finish(procs[:1], timeout=60)
  assert time.monotonic() - died < 30
  assert f'Resumed from the checkpoint of step {step}' in out_0
  assert code_0 == 1
  assert err_0.strip().splitlines()[-1].startswith(
      'error: process 0 of 2 lost another process of the run (')
