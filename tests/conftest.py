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
import subprocess  # noqa: E402
import sys  # noqa: E402

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


@pytest.fixture
def cnn_smoke_config():
  """The CNN's `smoke` config: a few seconds of real Fashion-MNIST training."""
  from configs import cnn
  return cnn.get_config('smoke')
