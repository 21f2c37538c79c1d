"""Faults that must lose nothing: a preemption notice (SIGTERM), a corrupt or half-written newest
checkpoint, a full disk while saving. Two-process faults are in test_multiprocess.py."""

import sys

import pytest

from configs import cnn
from conftest import ROOT, metric_events, this_process_cache_env
from dl10_jax.train.preemption import PREEMPTED_EXIT_CODE
from dl10_jax.train.trainer import KILL_AT_STEP, train_and_evaluate

# Logged every step, so the resumed log matches the reference whatever step the run stopped at.
OVERRIDES = dict(num_train_steps=12, log_every_steps=1, checkpoint_every_steps=5,
                 eval_every_steps=6, progress_bar=False)


def _config():
  config = cnn.get_config('smoke')
  config.update(OVERRIDES)
  return config


def _main_command(workdir) -> list[str]:
  return [sys.executable, '-m', 'dl10_jax.main', '--config', 'configs/cnn.py:smoke', '--workdir',
          str(workdir), *(f'--config.{k}={v}' for k, v in OVERRIDES.items())]


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_the_resume_reproduces_the_run(tmp_path, capsys):
  import subprocess
  train_and_evaluate(_config(), tmp_path / 'reference')
  workdir = tmp_path / 'preempted'
  # SIGTERM at the end of step 7, in the middle of the run: saved at the boundary after it.
  result = subprocess.run(_main_command(workdir), cwd=ROOT, capture_output=True, text=True,
                          env={**this_process_cache_env(), KILL_AT_STEP: '7:TERM'}, timeout=300)
  assert result.returncode == PREEMPTED_EXIT_CODE, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      f'preempted: saved the checkpoint of step 8 in {workdir}; rerun the same command to resume')
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()) == [5, 8]

  capsys.readouterr()
  train_and_evaluate(_config(), workdir)
  assert 'Resumed from the checkpoint of step 8' in capsys.readouterr().out
  for key in ('train_loss', 'eval_accuracy'):
    assert metric_events(workdir, key) == metric_events(tmp_path / 'reference', key)
