"""Training-step throughput of a config, against the machine's matmul peak and against PyTorch.

  python scripts/benchmark.py --config configs/cnn.py
  python scripts/benchmark.py --config configs/cnn.py --torch \
      --variants="model.conv_impl=xla,microbatch_size=0;microbatch_size=0;"

Reports steps/s, examples/s and model FLOP/s (from the compiled step's XLA cost analysis) as a
fraction of the measured float32 matmul peak; with --torch, the same model and optimizer in PyTorch
timed in the same run, and the ratio. The step is timed on real training batches already on the
device, then again fed by the grain pipeline as in training. Appends a table to
experiments/benchmarks.md.
"""

from __future__ import annotations

import ast
import datetime
import os
import pathlib
import platform
import sys
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/cnn.py', 'Experiment config.')
_STEPS = flags.DEFINE_integer('steps', 100, 'Timed steps per measurement.')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'Untimed steps first (compilation, caches).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Measurements per variant; the best is reported.')
_VARIANTS = flags.DEFINE_string(
    'variants', '', 'Config variants timed in the same run, separated by ";", each a comma-separated '
    'list of field=value overrides; an empty variant is the config as given. Example: '
    '"model.conv_impl=xla,microbatch_size=0;microbatch_size=0;"')
_TORCH = flags.DEFINE_bool('torch', False, 'Also time the PyTorch twin (needs '
                           'requirements-bench.txt); only models listed in TORCH_MODELS.')
_OUT = flags.DEFINE_string('out', str(ROOT / 'experiments' / 'benchmarks.md'), 'Markdown log.')


def apply_overrides(config, variant: str):
  """A copy of `config` with `a.b=value` overrides (values parsed as Python literals if possible).

  config_flags parses one set of overrides per process; the variants of one run need several.
  """
  config = config.copy_and_resolve_references()
  for item in filter(None, variant.split(',')):
    path, value = item.split('=', 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # A plain string.
    *parents, leaf = path.split('.')
    node = config
    for key in parents:
      node = node[key]
    node[leaf] = value
  return config


def best_time(fn, repeats: int) -> float:
  """The fastest of `repeats` calls of fn() (which must block until its work is done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def jax_matmul_flops(n: int = 2048) -> float:
  import jax
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  return 2 * n**3 / best_time(lambda: matmul(a).block_until_ready(), 5)


def step_flops(config) -> float:
  """Model FLOPs of one train step, from XLA's cost analysis of the compiled step.

  XLA counts a loop body once, so the micro-batch loop (performance only) is turned off for the
  count.
  """
  import jax
  from dl10_jax.train.trainer import build_experiment
  config = apply_overrides(config, 'microbatch_size=0')
  exp = build_experiment(config)
  batch = exp.example_batch()
  state = jax.eval_shape(exp.init, jax.random.PRNGKey(0), batch)
  cost = exp.train_step.lower(state, batch).compile().cost_analysis()
  per_device = (cost[0] if isinstance(cost, list) else cost).get('flops', float('nan'))
  return per_device * exp.mesh.size  # The cost analysis is of one device's partition.


def jax_step_throughput(config, steps: int, warmup: int, repeats: int,
                        flops: float | None = None) -> dict[str, float]:
  import jax
  from dl10_jax import data
  from dl10_jax.train import sharding
  from dl10_jax.train.trainer import build_experiment

  exp = build_experiment(config)
  it = data.train_iterator(exp.splits.train, exp.config.batch_size, 0, prefetch=1)
  batches = [sharding.to_global(next(it), exp.mesh) for _ in range(8)]
  state = exp.init(jax.random.PRNGKey(0), batches[0])
  flops = step_flops(config) if flops is None else flops

  def run(n):
    nonlocal state
    for i in range(n):
      state, metrics = exp.train_step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)

  def run_fed(n):  # The same steps, fed by the grain pipeline as in training.
    nonlocal state
    for _ in range(n):
      state, metrics = exp.train_step(state, sharding.to_global(next(it), exp.mesh))
    jax.block_until_ready(metrics)

  run(warmup)
  seconds = best_time(lambda: run(steps), repeats) / steps
  fed_seconds = best_time(lambda: run_fed(steps), repeats) / steps
  return {'steps_per_sec': 1 / seconds,
          'examples_per_sec': exp.config.batch_size / seconds,
          'fed_examples_per_sec': exp.config.batch_size / fed_seconds,
          'flops_per_sec': flops / seconds}


# --- PyTorch twins of the models, for the comparison (CPU build; benchmark-only dependency). ---

def torch_cnn(config):
  import torch
  c1, c2 = config.model.conv_features
  return torch.nn.Sequential(
      torch.nn.Conv2d(1, c1, 3), torch.nn.ReLU(), torch.nn.Conv2d(c1, c2, 3), torch.nn.ReLU(),
      torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12 * 12 * c2,
                                                                 config.model.dense_features),
      torch.nn.ReLU(), torch.nn.Linear(config.model.dense_features, config.model.num_classes))


TORCH_MODELS = {'cnn': torch_cnn}


def torch_step_throughput(config, steps: int, warmup: int, repeats: int) -> dict[str, float]:
  import numpy as np
  import torch
  from dl10_jax import data
  torch.set_num_threads(os.cpu_count())
  model = TORCH_MODELS[config.model.name](config)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
  it = data.train_iterator(data.load(config.dataset).train, config.batch_size, 0, prefetch=1)
  batches = [next(it) for _ in range(8)]
  batches = [(torch.from_numpy(np.ascontiguousarray(b['image'].transpose(0, 3, 1, 2))),
              torch.from_numpy(b['label']).long()) for b in batches]

  def run(n):
    for i in range(n):
      x, y = batches[i % len(batches)]
      optimizer.zero_grad(set_to_none=True)
      loss = torch.nn.functional.cross_entropy(model(x), y)
      loss.backward()
      optimizer.step()

  run(warmup)
  seconds = best_time(lambda: run(steps), repeats) / steps
  a = torch.randn(2048, 2048)
  matmul = best_time(lambda: a @ a, 5)
  return {'steps_per_sec': 1 / seconds, 'examples_per_sec': config.batch_size / seconds,
          'matmul_flops': 2 * 2048**3 / matmul}


def _cpu_name() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def main(argv):
  del argv
  import jax
  config = _CONFIG.value
  device = f'{jax.devices()[0].device_kind} x{jax.device_count()}'
  if jax.default_backend() == 'cpu':
    device = f'{_cpu_name()}, {os.cpu_count()} cores'
  peak = jax_matmul_flops()
  # PyTorch is timed before and after JAX (its speed drifts by +-20 % between runs here); the
  # faster of the two counts, as does the best repeat of every measurement.
  use_torch = _TORCH.value and config.model.name in TORCH_MODELS
  torch_runs = []
  if use_torch:
    torch_runs.append(torch_step_throughput(config, _STEPS.value, _WARMUP.value, _REPEATS.value))
  rows = []
  for variant in _VARIANTS.value.split(';'):
    r = jax_step_throughput(apply_overrides(config, variant), _STEPS.value, _WARMUP.value,
                            _REPEATS.value)
    label = f'jax {variant}' if variant else 'jax (config as given)'
    rows.append((label, r['steps_per_sec'], r['examples_per_sec'], r['fed_examples_per_sec'],
                 r['flops_per_sec']))
    print(f'{label}: {r["examples_per_sec"]:.0f} examples/s, '
          f'{r["flops_per_sec"] / 1e9:.1f} GFLOP/s ({r["flops_per_sec"] / peak:.1%} of peak)')

  torch_result = None
  if use_torch:
    torch_runs.append(torch_step_throughput(config, _STEPS.value, _WARMUP.value, _REPEATS.value))
    torch_result = max(torch_runs, key=lambda r: r['examples_per_sec'])
    print('torch: ' + ' / '.join(f'{r["examples_per_sec"]:.0f}' for r in torch_runs) +
          ' examples/s (before / after JAX)')

  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  lines = [f'\n## {config.model.name}: {date}\n',
           f'Device: {device}; jax {jax.__version__}; batch {config.batch_size}, '
           f'dtype {config.dtype}; best of {_REPEATS.value} x {_STEPS.value} steps' +
           (f'; GLIBC_TUNABLES={os.environ["GLIBC_TUNABLES"]}' if 'GLIBC_TUNABLES' in os.environ
            else '') + '.',
           f'float32 matmul peak (2048^3): jax {peak / 1e9:.0f} GFLOP/s' +
           (f', torch {torch_result["matmul_flops"] / 1e9:.0f} GFLOP/s; PyTorch step before / '
            'after the JAX runs: ' + ' / '.join(f'{r["examples_per_sec"]:.0f}' for r in torch_runs)
            + ' examples/s, the faster counts' if torch_result else '') + '.\n',
           '| implementation | steps/s | examples/s | examples/s fed by grain | model GFLOP/s | '
           'of matmul peak |' + (' vs PyTorch |' if torch_result else ''),
           '|---|---|---|---|---|---|' + ('---|' if torch_result else '')]
  for label, sps, eps, fed, fps in rows:
    ratio = f' {eps / torch_result["examples_per_sec"]:.2f}x |' if torch_result else ''
    lines.append(f'| {label} | {sps:.1f} | {eps:.0f} | {fed:.0f} | {fps / 1e9:.1f} | '
                 f'{fps / peak:.1%} |' + ratio)
  if torch_result:
    import torch
    lines.append(f'| torch {torch.__version__} | '
                 f'{torch_result["steps_per_sec"]:.1f} | {torch_result["examples_per_sec"]:.0f} '
                 '| | | | 1.00x |')
  out = pathlib.Path(_OUT.value)
  if not out.exists():
    out.write_text('# Benchmarks\n\nWritten by `scripts/benchmark.py`; newest last.\n')
  with out.open('a') as f:
    f.write('\n'.join(lines) + '\n')
  print(f'appended to {out}')


if __name__ == '__main__':
  app.run(main)
