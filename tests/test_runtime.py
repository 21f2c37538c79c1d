"""The runtime around JAX: default XLA flags, the allocator line, the compilation cache, setup."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, cached_compile_env, metric_events
from dl10_jax import runtime
from dl10_jax.errors import ConfigError


def test_default_flags_join_the_users_and_never_replace_them(monkeypatch):
  monkeypatch.setattr(runtime, 'DEFAULT_XLA_CPU_FLAGS', {'xla_a': 'true', 'xla_b': 'X'})
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8 --xla_b=Y'}
  runtime.set_default_xla_flags(env)
  assert env['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=8', '--xla_b=Y',
                                      '--xla_a=true']
  empty = {}
  runtime.set_default_xla_flags(empty)
  assert empty['XLA_FLAGS'] == '--xla_a=true --xla_b=X'
  opted_out = {'DL10_DEFAULT_XLA_FLAGS': '0', 'XLA_FLAGS': '--xla_b=Y'}
  runtime.set_default_xla_flags(opted_out)
  assert opted_out['XLA_FLAGS'] == '--xla_b=Y'


def test_cpu_devices_splits_the_cpu_of_a_fresh_process_unless_the_user_chose():
  code = ('from dl10_jax import runtime; import jax; '
          'print(runtime.use_cpu_devices(2), jax.device_count())')
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')}
  run = lambda env: subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, check=True,
                                   capture_output=True, text=True).stdout.split()
  assert run(env) == ['True', '2']
  assert run({**env, 'XLA_FLAGS': '--xla_force_host_platform_device_count=3'}) == ['False', '3']
  assert run({**env, 'JAX_NUM_CPU_DEVICES': '1'}) == ['False', '1']


def test_cpu_devices_is_checked_and_leaves_a_running_jax_alone():
  import jax
  with pytest.raises(ConfigError, match=re.escape("cpu_devices=-1 must be >= 0")):
    runtime.use_cpu_devices(-1, environ={})
  count = jax.device_count()  # This process has its devices already.
  assert not runtime.use_cpu_devices(count + 1, environ={})
  assert jax.device_count() == count


def test_compilation_cache_dir_follows_config_then_environment(monkeypatch, tmp_path):
  monkeypatch.setenv('DL10_CACHE_DIR', str(tmp_path / 'root'))
  monkeypatch.delenv('DL10_COMPILATION_CACHE', raising=False)
  assert runtime.compilation_cache_dir() == tmp_path / 'root' / 'xla'
  monkeypatch.setenv('DL10_COMPILATION_CACHE', str(tmp_path / 'env'))
  assert runtime.compilation_cache_dir() == tmp_path / 'env'
  assert runtime.compilation_cache_dir(str(tmp_path / 'config')) == tmp_path / 'config'
  assert runtime.compilation_cache_dir('off') is None
  monkeypatch.setenv('DL10_COMPILATION_CACHE', 'off')
  assert runtime.compilation_cache_dir() is None


@pytest.mark.slow
def test_a_second_process_compiles_nothing_new_and_main_names_the_allocator_once(tmp_path):
  cache = tmp_path / 'xla'
  env = cached_compile_env(cache, one_device=True)
  env.pop('LD_PRELOAD', None)  # The first process runs on glibc's malloc.
  command = [sys.executable, '-m', 'dl10_jax.main', '--config', 'configs/cnn.py:smoke',
             '--config.num_train_steps=4', '--config.eval_every_steps=4']

  first = subprocess.run([*command, '--workdir', str(tmp_path / 'a')], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr
  # Without tcmalloc preloaded, main says once how to get it.
  assert first.stderr.count('running with glibc malloc') == 1, first.stderr
  entries = sorted(p.name for p in cache.iterdir())
  assert len(entries) >= 3  # init, train step, eval step at least.

  tcmalloc = runtime.tcmalloc_path()
  second_env = dict(env, LD_PRELOAD=tcmalloc) if tcmalloc else env
  second = subprocess.run([*command, '--workdir', str(tmp_path / 'b')], cwd=ROOT,
                          env=second_env, capture_output=True, text=True, timeout=300)
  assert second.returncode == 0, second.stderr
  assert sorted(p.name for p in cache.iterdir()) == entries  # Every compile was a cache hit.
  if tcmalloc:
    assert 'glibc malloc' not in second.stderr
  for key in ('train_loss', 'eval_loss'):  # The cached programs compute the same run.
    assert metric_events(tmp_path / 'b', key) == metric_events(tmp_path / 'a', key)


@pytest.mark.slow
def test_compilation_cache_off_writes_nothing(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  env['DL10_CACHE_DIR'] = str(tmp_path / 'root')
  result = subprocess.run(
      [sys.executable, '-m', 'dl10_jax.main', '--config', 'configs/cnn.py:smoke',
       '--config.num_train_steps=2', '--config.compilation_cache_dir=off',
       '--workdir', str(tmp_path / 'run')], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr
  assert not (tmp_path / 'root' / 'xla').exists()


def _shell_without_apt(tmp_path: pathlib.Path) -> dict[str, str]:
  """PATH with the tools setup_system.sh needs and no apt-get."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for tool in ('bash', 'id', 'dirname'):
    path = shutil.which(tool)
    if path:
      (bin_dir / tool).symlink_to(path)
  return {'PATH': str(bin_dir), 'HOME': str(tmp_path)}


def test_setup_without_apt_ends_with_one_line_per_missing_package(tmp_path):
  env = dict(_shell_without_apt(tmp_path), SETUP_SYSTEM_ROOT=str(tmp_path / 'empty_root'))
  result = subprocess.run(['bash', str(ROOT / 'scripts' / 'setup_system.sh')], env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0  # Nothing is fatal: each piece says how to get it.
  lines = result.stderr.splitlines()
  assert len(lines) == 2, result.stderr
  assert 'dataset-fashion-mnist' in lines[0] and 'DL10_DATA_DIR' in lines[0]
  assert 'libtcmalloc-minimal4' in lines[1]


@pytest.mark.slow
def test_benchmark_names_the_allocator_and_flags(tmp_path):
  record = tmp_path / 'record.jsonl'
  result = subprocess.run(
      [sys.executable, 'scripts/benchmark.py', '--config=configs/cnn.py:smoke', '--steps=2',
       '--warmup=1', '--repeats=2', f'--out={tmp_path / "b.md"}', f'--record={record}',
       f'--profile={tmp_path / "profile"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  text = (tmp_path / 'b.md').read_text()
  assert re.search(r'allocator (glibc|tcmalloc); XLA_FLAGS ', text), text
  assert 'medians of 2 calls' in text
  (data,) = [json.loads(line) for line in record.read_text().splitlines()]
  (row,) = data['jax'].values()
  assert len(row['seconds_per_step']) == 2 and data['allocator'] in ('glibc', 'tcmalloc')
  assert list((tmp_path / 'profile').rglob('*.xplane.pb'))  # --profile: the timed calls' trace.
  assert 'traced by --profile' in text


def test_setup_env_refuses_an_old_python_with_one_line(tmp_path):
  env = dict(_shell_without_apt(tmp_path), VENV=str(tmp_path / 'venv'))
  old_python = tmp_path / 'bin' / 'python3'  # Answers like a Python older than 3.12.
  old_python.write_text('#!/bin/sh\nexit 1\n')
  old_python.chmod(0o755)
  result = subprocess.run(['bash', str(ROOT / 'scripts' / 'setup_env.sh')], env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 1
  assert result.stderr.count('\n') == 1 and 'Python 3.12 or newer' in result.stderr, result.stderr
  assert not (tmp_path / 'venv').exists()


_STEP_SCRIPT = '''
import sys
import jax, numpy as np
from dl10_jax.train.experiment import build_experiment
from dl10_jax.train import sharding
from configs import {module} as config_module

def record(path):
  config = config_module.get_config('smoke')
  config.mesh.data = 1
  exp = build_experiment(config, jax.devices()[:1])
  it = exp.train_iterator()
  state = exp.init(jax.random.PRNGKey(0), exp.example_batch())
  batch = sharding.to_global(next(it), exp.mesh)
  loss = lambda params: exp.objective.loss(params, state, batch, jax.random.PRNGKey(1))[0]
  grads = {{jax.tree_util.keystr(k): np.asarray(v) for k, v in
            jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(state.params))}}
  losses = []
  for _ in range(3):
    state, metrics = exp.train_step(state, batch)
    losses.append(float(metrics[exp.objective.loss_metric]))
  np.savez(path, losses=np.array(losses), **grads)

if __name__ == '__main__':
  record(sys.argv[1])
'''


# dl10_jax's defaults and what bench_families.py measured besides them (experiments/xla_flags).
CHECKED_FLAGS = sorted({f'--{k}={v}' for k, v in runtime.DEFAULT_XLA_CPU_FLAGS.items()} | {
    '--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY',
    '--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce'})


@pytest.fixture(scope='module')
def unflagged(tmp_path_factory):
  """module -> its step record without flags, computed once, in this process (whose XLA_FLAGS
  only add fake devices, and DEFAULT_XLA_CPU_FLAGS, which the flagged runs compare against)."""
  records = {}

  def get(module: str) -> dict[str, np.ndarray]:
    if module not in records:
      path = tmp_path_factory.mktemp('plain') / f'{module}.npz'
      namespace = {'__name__': 'step_script'}
      exec(_STEP_SCRIPT.format(module=module), namespace)
      namespace['record'](path)
      records[module] = dict(np.load(path))
    return dict(records[module])
  return get


@pytest.mark.slow
@pytest.mark.parametrize('module', ['gpt', 'resnet'])
@pytest.mark.parametrize('flag', CHECKED_FLAGS)
def test_flagged_steps_train_like_no_flags(module, flag, tmp_path, unflagged):
  """The gradient of a batch and three training steps' losses under an XLA:CPU flag (a process of
  its own: XLA reads its flags once) and without: the same float32 numbers up to the summation
  order of the libraries the flag brings in."""
  path = tmp_path / 'flagged.npz'
  env = dict(os.environ, XLA_FLAGS=flag, DL10_DEFAULT_XLA_FLAGS='0')
  result = subprocess.run([sys.executable, '-c', _STEP_SCRIPT.format(module=module), str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  flagged, plain = dict(np.load(path)), unflagged(module)
  np.testing.assert_allclose(flagged.pop('losses'), plain.pop('losses'), rtol=1e-5)
  assert flagged.keys() == plain.keys()
  for key in plain:  # Gradients at the start, each to float32 noise of its own scale.
    scale = np.abs(plain[key]).max()
    np.testing.assert_allclose(flagged[key], plain[key], rtol=1e-4, atol=1e-5 * scale,
                               err_msg=key)
