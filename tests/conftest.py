"""Test setup: 8 fake CPU devices (so sharding is exercised on any machine) and shared fixtures.

Set in the environment, so that the subprocesses of the CLI tests inherit them too.
"""

import os

# Implicit rank promotion hides shape bugs (a [B] + [B, 1] that broadcasts to [B, B]).
os.environ.setdefault('JAX_NUMPY_RANK_PROMOTION', 'raise')

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()

import json  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -m module args` from the repository root, as a user runs it; output captured."""
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """The events of a run's metrics.jsonl, in order."""
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def metric_events(workdir: pathlib.Path, key: str) -> dict[int, float]:
  """{step: value} of `key` in metrics.jsonl; a step logged twice (a resume) keeps the last."""
  return {e['step']: e[key] for e in read_metrics(workdir) if key in e}


def cached_compile_env(cache_dir: pathlib.Path, one_device: bool = False) -> dict[str, str]:
  """os.environ with the project's compilation cache in `cache_dir` (dl10_jax/runtime.py keeps
  every compile), for a test that runs main in several processes: the later ones compile nothing
  the first did not. `one_device` drops the 8 fake devices (faster compiles; use it in every
  process of the test, so the numerics agree)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE'))}
  env['DL10_COMPILATION_CACHE'] = str(cache_dir)
  if one_device:
    env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                                if 'device_count' not in f)
  return env


def kill_after_checkpoint(command: list[str], workdir: pathlib.Path, step: int,
                          env: dict[str, str], timeout: float = 300) -> None:
  """Starts the training `command` (writing into `workdir`) and SIGKILLs it as soon as the
  checkpoint of `step` is on disk: a crash between checkpoints, with no chance to clean up."""
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not (workdir / 'checkpoints' / str(step)).is_dir() and time.time() < deadline:
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL


EXPORT_PLATFORM = {'triton': 'cuda', 'tpu': 'tpu'}
TRITON_CALL = '__gpu$xla.gpu.triton'


def export_for(backend: str, fn, *args):
  """`jax.export` of jit(fn) for a GPU ('triton') or a TPU ('tpu'), without one: lowering checks
  what interpret mode cannot (block legality, the kernel's own Triton or Mosaic code).

  Triton lowers for a GPU model, named here as an abstract device (an H100); its custom call is
  not on export's stability allow-list.
  """
  import contextlib
  import jax
  checks, context = [], contextlib.nullcontext()
  if backend == 'triton':
    checks = [jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
    gpu = jax.sharding.AbstractDevice(device_kind='NVIDIA H100', num_cores=None, platform='gpu')
    context = jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ('x',),
                                                                       abstract_device=gpu))
  with context:
    return jax.export.export(jax.jit(fn), platforms=[EXPORT_PLATFORM[backend]],
                             disabled_checks=checks)(*args)


@pytest.fixture
def cnn_smoke_config():
  """The CNN's `smoke` config: a few seconds of real Fashion-MNIST training."""
  from configs import cnn
  return cnn.get_config('smoke')
