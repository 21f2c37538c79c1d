"""A real multi-process run on this machine: two processes of 4 fake CPU devices each, meeting over
loopback through jax.distributed (gloo collectives), train like one process with 8 devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from configs import gpt as gpt_config
from conftest import ROOT, read_metrics, run_main
from dl10_jax.train.trainer import train_and_evaluate

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
