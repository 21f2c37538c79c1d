"""Profiles of chosen steps (config.profile_steps) and the step-time breakdown at log points."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from dl10_jax import config_lib
from dl10_jax.errors import ConfigError
from dl10_jax.train import profiling
from configs import cnn
from conftest import read_metrics, run_main

BREAKDOWN = ('time_data_wait', 'time_dispatch', 'time_device', 'data_wait_fraction')


def _traces(directory):
  """What jax.profiler writes, also on CPU: plugins/profile/<time>/<host>.xplane.pb."""
  return sorted(directory.rglob('*.xplane.pb'))


@pytest.mark.slow
def test_a_run_writes_the_trace_and_the_breakdown_at_every_log_point(tmp_path):
  result = run_main('--config', 'configs/cnn.py:smoke', '--workdir', str(tmp_path),
                    '--config.profile_steps=2,2')
  assert result.returncode == 0, result.stderr
  assert len(_traces(tmp_path / 'profile')) == 1
  (timeline,) = (tmp_path / 'profile').rglob('*.trace.json.gz')  # Written beside, on CPU too.
  events = json.loads(gzip.decompress(timeline.read_bytes()))['traceEvents']
  assert sorted(e['args']['step_num'] for e in events if e.get('name') == 'train') == ['2', '3']
  logs = [e for e in read_metrics(tmp_path) if 'train_loss' in e]
  assert [e['step'] for e in logs] == [4, 8, 12, 16]
  for event in logs:
    assert all(event[key] >= 0 for key in BREAKDOWN), event
    assert event['data_wait_fraction'] <= 1
    # The measured parts fill the interval's wall time, less the loop's own few microseconds.
    measured = sum(event[f'time_{part}'] for part in profiling.PARTS)
    assert 0.5 < measured * event['steps_per_sec'] <= 1.01, event


@pytest.mark.parametrize('value', ['x', '2', '-1,3', '2,0', '1,2,3', '0,1'])
def test_a_bad_profile_steps_is_one_line(value):
  config = cnn.get_config()
  config.profile_steps = value
  with pytest.raises(ConfigError, match=f"profile_steps={value!r} must be 'START,COUNT'"):
    config_lib.finalize(config, num_train_examples=60_000, num_data_devices=8)


def test_a_window_past_the_run_is_one_line():
  config = cnn.get_config()
  config.num_train_steps, config.profile_steps = 10, '9, 3'
  with pytest.raises(ConfigError, match="'9, 3' traces up to step 11, past num_train_steps=10"):
    config_lib.finalize(config, num_train_examples=60_000, num_data_devices=8)
  config.profile_steps = '9,2'
  assert config_lib.finalize(config, 60_000, 8).profile_steps == '9,2'


@pytest.mark.parametrize('value', ['x', '2', '-1,3'])
def test_bad_profile_steps_from_the_command_line_is_one_line(value, tmp_path):
  result = run_main('--config', 'configs/cnn.py:smoke', '--workdir', str(tmp_path),
                    f'--config.profile_steps={value}')
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1 and f'profile_steps={value!r}' in lines[0], result.stderr


def test_the_window_traces_its_steps_once_and_not_after_a_resume(tmp_path):
  step_fn = jax.jit(lambda x: x @ x)
  state = jnp.ones((64, 64))
  profile = profiling.Profile('2,2', tmp_path, start_step=0)
  started, ended = [], []
  for step in range(1, 6):
    started.append(profile.begin_step(step))
    state = step_fn(state)
    ended.append(profile.end_step(step, state))
  assert started == [False, True, False, False, False]
  assert ended == [False, False, True, False, False] and not profile.active
  assert len(_traces(tmp_path / 'profile')) == 1
  resumed = profiling.Profile('2,2', tmp_path, start_step=2)  # Resumed past START: no trace.
  assert not any(resumed.begin_step(step) for step in range(3, 6))


def test_a_trace_still_running_is_written_at_close(tmp_path):
  profile = profiling.Profile('1,100', tmp_path, start_step=0)
  assert profile.begin_step(1)
  jax.block_until_ready(jax.jit(jnp.sin)(jnp.ones(8)))
  profile.stop()
  profile.stop()  # Idempotent: the trainer's close runs after a normal end too.
  assert len(_traces(tmp_path / 'profile')) == 1


def test_step_times_are_seconds_per_step_of_the_interval():
  times = profiling.StepTimes()
  with times('data_wait'):
    pass
  assert times.summary(0, 0.0) == dict.fromkeys(BREAKDOWN, 0.0)  # No timed step yet.
  summary = times.summary(4, 2.0)
  assert summary['time_data_wait'] == pytest.approx(summary['data_wait_fraction'] * 2.0 / 4)
  times.reset()
  assert times.summary(4, 2.0) == dict.fromkeys(BREAKDOWN, 0.0)
