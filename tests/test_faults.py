"""Faults that must lose nothing: a preemption notice (SIGTERM), a corrupt or half-written newest
checkpoint, a full disk while saving. Two-process faults are in test_multiprocess.py."""

import errno
import os
import subprocess
import sys

import pytest

from configs import cnn
from conftest import ROOT, metric_events, run_main, this_process_cache_env
from dl10_jax.train.checkpoint import CheckpointUnreadable
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


def _truncate_largest_array_file(step_dir) -> None:
  """A file of the newest step cut short, as a disk or a copy that failed halfway leaves it."""
  largest = max((p for p in (step_dir / 'state').rglob('*') if p.is_file()),
                key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(tmp_path, capsys, caplog):
  config = _config()
  config.update(num_train_steps=4, checkpoint_every_steps=2)
  workdir = tmp_path / 'run'
  train_and_evaluate(config, workdir)
  reference = metric_events(workdir, 'train_loss')
  _truncate_largest_array_file(workdir / 'checkpoints' / '4')

  capsys.readouterr()
  train_and_evaluate(config, workdir)
  assert 'Resumed from the checkpoint of step 2' in capsys.readouterr().out
  warnings = [r.getMessage() for r in caplog.records if 'does not restore' in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith(
      f'the checkpoint of step 4 in {workdir / "checkpoints"} does not restore ('), warnings
  assert metric_events(workdir, 'train_loss') == reference
  caplog.clear()
  capsys.readouterr()
  train_and_evaluate(config, workdir)  # Step 4 saved again, whole.
  assert 'Resumed from the checkpoint of step 4' in capsys.readouterr().out
  assert not [r for r in caplog.records if 'does not restore' in r.getMessage()]

  for step in (2, 4):  # Nothing restores: no silent fresh start over the damaged steps.
    (workdir / 'checkpoints' / str(step) / 'state' / '_METADATA').write_text('{"tree_metadata":')
  with pytest.raises(CheckpointUnreadable, match=r'none of the checkpoints in .* restores '
                     r'\(steps \[2, 4\]; see the warnings above\); move that directory away'):
    train_and_evaluate(config, workdir)


@pytest.fixture(params=['tmpfs', 'patched_write'])
def small_disk(request, tmp_path, monkeypatch):
  """(directory, make_room): a disk with room for one checkpoint of the CNN smoke run, not two.

  A real 20 MiB tmpfs where this process may mount one (root), else orbax's save raising ENOSPC
  from the second checkpoint on.
  """
  disk = tmp_path / 'disk'
  disk.mkdir()
  if request.param == 'patched_write':
    import orbax.checkpoint as ocp
    save = ocp.CheckpointManager.save

    def full_from_step_4(self, step, *args, **kwargs):
      if step >= 4:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory / str(step)))
      return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, 'save', full_from_step_4)
    yield disk, monkeypatch.undo
    return
  if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=20m', 'tmpfs',
                                          str(disk)], capture_output=True).returncode:
    pytest.skip('mounting a tmpfs needs root')
  yield disk, lambda: subprocess.run(['mount', '-o', 'remount,size=100m', str(disk)], check=True)
  subprocess.run(['umount', '-l', str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_in_one_line_and_keeps_the_previous_checkpoint(small_disk):
  disk, make_room = small_disk
  args = ['--config', 'configs/cnn.py:smoke', '--workdir', str(disk / 'run'),
          '--config.num_train_steps=6', '--config.checkpoint_every_steps=2',
          '--config.progress_bar=False']
  result = run_main(*args)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: no space left on device while saving a checkpoint in {disk}/run/checkpoints; '
      'the checkpoint of step 2 is still usable: free space and rerun to resume')
  make_room()
  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resumed from the checkpoint of step 2' in result.stdout
