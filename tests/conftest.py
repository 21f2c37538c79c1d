"""Test setup: 8 fake CPU devices (so sharding is exercised on any machine) and shared fixtures.

Set in the environment, so that the subprocesses of the CLI tests inherit them too.
"""

import os

# Implicit rank promotion hides shape bugs (a [B] + [B, 1] that broadcasts to [B, B]).
os.environ.setdefault('JAX_NUMPY_RANK_PROMOTION', 'raise')

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
# Tests compile far more than they run: LLVM's optimisation passes are most of a CPU compile, and
# level 0 keeps XLA's own (fusion, layout) and the same numerics at a third of the compile time.
if '--xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'

import json  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -m module args` from the repository root, as a user runs it; output captured."""
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def pytest_configure(config: pytest.Config) -> None:
  """Every compile of the test processes goes through the project's persistent compilation cache,
  as in `main`, from the first one (JAX checks once, at the first compile, whether the cache is
  on): a process a test starts (a run killed on purpose) loads what the test compiled here."""
  if getattr(config.option, 'numprocesses', None) and not hasattr(config, 'workerinput'):
    return  # The xdist controller compiles nothing: no JAX import before the workers start.
  from dl10_jax import runtime
  runtime.enable_compilation_cache()


def run_main(*args: str) -> subprocess.CompletedProcess:
  """`python -m dl10_jax.main args` run in this process (no interpreter start or JAX import, and
  compiled programs reused): the same flag parsing and `main`, with its exit code and output.
  Real processes are tested too (test_main.py), where a behaviour needs one."""
  import contextlib
  import io
  from absl import app, flags, logging
  from dl10_jax import main
  stdout, stderr, code = io.StringIO(), io.StringIO(), 0
  level = logging.get_absl_logger().level  # main quietens logging; later tests read INFO lines.
  argv, sys.argv = sys.argv, ['main', *args]  # config_flags reads overrides from sys.argv.
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      flags.FLAGS.unparse_flags()
      app.define_help_flags()
      main.main(main.parse_flags(sys.argv))
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 1
  finally:
    sys.argv = argv
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith('config.')]:  # This config's overrides.
      delattr(flags.FLAGS, name)
    logging.get_absl_logger().setLevel(level)  # After unparse_flags, which resets it too.
  return subprocess.CompletedProcess(['main', *args], code, stdout.getvalue(), stderr.getvalue())


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


def this_process_cache_env() -> dict[str, str]:
  """cached_compile_env with the compilation cache this test process uses: a subprocess then loads
  what the test compiled in-process (and the reverse)."""
  import jax
  return cached_compile_env(pathlib.Path(jax.config.jax_compilation_cache_dir or 'off'))


def run_until_killed(command: list[str], step: int, env: dict[str, str],
                     timeout: float = 300) -> None:
  """Runs the training `command` until it SIGKILLs itself at the end of `step` (the trainer's
  DL10_KILL_AT_STEP): a crash with no chance to clean up, at an exact step between checkpoints."""
  from dl10_jax.train.trainer import KILL_AT_STEP
  result = subprocess.run(command, cwd=ROOT, env={**env, KILL_AT_STEP: str(step)},
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


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
