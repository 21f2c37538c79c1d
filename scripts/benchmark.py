"""Training-step throughput of a config, against the machine's matmul peak and against PyTorch.

  python scripts/benchmark.py --config configs/cnn.py
  python scripts/benchmark.py --config configs/cnn.py --torch \
      --variants="model.conv_impl=xla,microbatch_size=0;microbatch_size=0;"
  python scripts/benchmark.py --config configs/lstm.py --torch --steps 20
  python scripts/benchmark.py --config configs/gpt.py:large --torch --torch_compile --steps 5 \
      --variants="model.attention_impl=xla;"

Reports steps/s, examples/s (tokens/s for language models) and model FLOP/s as a fraction of the
measured float32 matmul peak (JAX's and PyTorch's: on a CPU the best BLAS on the machine is the
limit); with --torch, the same model and optimizer in PyTorch (scripts/torch_twins.py; eager, and
with --torch_compile compiled) timed in the same process, so under the same allocator, before and
after JAX, and the ratios. Every figure is the median over all timed calls (PyTorch's: before and
after together). The step is timed on real training batches already on the device, then again fed
by the grain pipeline as in training. Appends a table, naming the allocator and the XLA flags, to
experiments/benchmarks.md. With --profile DIR, the timed JAX calls are also traced into DIR
(overhead included in the figures): `tensorboard --logdir DIR`, profile tab.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import statistics
import sys

from absl import app, flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from step_timing import (apply_overrides, cpu_name, jax_matmul_flops,  # noqa: E402
                         jax_step_throughput, torch_step_seconds)

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/cnn.py', 'Experiment config.')
_STEPS = flags.DEFINE_integer('steps', 100, 'Timed steps per measurement.')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'Untimed steps first (compilation, caches).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per variant (per side, per PyTorch '
                                 'pass); the median is reported.')
_VARIANTS = flags.DEFINE_string(
    'variants', '', 'Config variants timed in the same run, separated by ";", each a comma-separated '
    'list of field=value overrides; an empty variant is the config as given. Example: '
    '"model.conv_impl=xla,microbatch_size=0;microbatch_size=0;"')
_TORCH = flags.DEFINE_bool('torch', False, 'Also time the PyTorch twin (needs '
                           'requirements-bench.txt; models in scripts/torch_twins.py).')
_COMPILE = flags.DEFINE_bool('torch_compile', False, 'Also time the torch.compile()d twin.')
_OUT = flags.DEFINE_string('out', str(ROOT / 'experiments' / 'benchmarks.md'),
                           'Markdown log to append to (empty: none).')
_RECORD = flags.DEFINE_string('record', '', 'JSON-lines file to append the raw timings to.')
_PROFILE = flags.DEFINE_string('profile', '', 'Directory to write a jax.profiler trace of the '
                               'timed JAX calls to (several variants: one subdirectory each).')


def _tokens_per_example(config) -> int:
  return config.dataset.block_size if config.objective == 'language_model' else 0


def main(argv):
  del argv
  import jax
  from dl10_jax import runtime
  config = _CONFIG.value
  runtime.use_cpu_devices(config.get('cpu_devices', 0))  # As training would.
  device = f'{jax.devices()[0].device_kind} x{jax.device_count()}'
  if jax.default_backend() == 'cpu':
    device = f'{cpu_name()}, {os.cpu_count()} cores, {jax.device_count()} JAX device(s)'
  peak = jax_matmul_flops()
  # PyTorch is timed before and after JAX (its speed drifts between runs); the median is over
  # the calls of both passes.
  torch_kinds = (['eager'] + (['compile'] if _COMPILE.value else [])) if _TORCH.value else []
  torch_calls = {kind: [] for kind in torch_kinds}

  def time_torch():
    for kind in torch_kinds:
      torch_calls[kind] += torch_step_seconds(config, _STEPS.value, _WARMUP.value,
                                              _REPEATS.value, kind == 'compile')

  time_torch()
  rows = []
  variants = _VARIANTS.value.split(';')
  for index, variant in enumerate(variants):
    profile_dir = _PROFILE.value and (os.path.join(_PROFILE.value, f'variant_{index}')
                                      if len(variants) > 1 else _PROFILE.value)
    r = jax_step_throughput(apply_overrides(config, variant), _STEPS.value, _WARMUP.value,
                            _REPEATS.value, profile_dir=profile_dir)
    label = f'jax {variant}' if variant else 'jax (config as given)'
    rows.append((label, r))
    print(f'{label}: {r["examples_per_sec"]:.0f} examples/s, '
          f'{r["flops_per_sec"] / 1e9:.1f} GFLOP/s ({r["flops_per_sec"] / peak:.1%} of peak)' +
          (f'; trace in {profile_dir}' if profile_dir else ''))
  time_torch()
  torch_rate = {kind: config.batch_size / statistics.median(calls)
                for kind, calls in torch_calls.items()}
  for kind, calls in torch_calls.items():
    print(f'torch {kind}: {torch_rate[kind]:.0f} examples/s (median of {len(calls)} calls: ' +
          ', '.join(f'{config.batch_size / t:.0f}' for t in calls) + ')')
  torch_peak = None
  if torch_kinds:
    sys.path.insert(0, str(ROOT / 'scripts'))
    import torch_twins
    torch_peak = torch_twins.matmul_flops()

  per_example = _tokens_per_example(config)
  unit = 'tokens/s' if per_example else 'examples/s'
  scale = per_example or 1
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  flags_in_effect = os.environ.get('XLA_FLAGS', '').strip() or 'none'
  lines = [f'\n## {config.model.name}: {date}\n',
           f'Device: {device}; jax {jax.__version__}; allocator {runtime.allocator()}; '
           f'XLA_FLAGS {flags_in_effect}; batch {config.batch_size}' +
           (f' x {per_example} tokens' if per_example else '') +
           f', dtype {config.dtype}; medians of {_REPEATS.value} calls x {_STEPS.value} steps '
           f'(PyTorch: {2 * _REPEATS.value} calls, before and after JAX)' +
           ('; JAX traced by --profile, its overhead included.' if _PROFILE.value else '.'),
           f'float32 matmul peak (2048^3): jax {peak / 1e9:.0f} GFLOP/s' +
           (f', PyTorch {torch_peak / 1e9:.0f} GFLOP/s' if torch_peak else '') + '.\n',
           f'| implementation | steps/s | {unit} | {unit} fed by grain | model GFLOP/s | '
           'of jax matmul peak |' + (' of PyTorch matmul peak |' if torch_peak else '') +
           ''.join(f' vs torch {kind} |' for kind in torch_rate),
           '|---|---|---|---|---|---|' + '---|' * (len(torch_rate) + bool(torch_peak))]
  for label, r in rows:
    ratios = ''.join(f' {r["examples_per_sec"] / t:.2f}x |' for t in torch_rate.values())
    lines.append(f'| {label} | {r["steps_per_sec"]:.2f} | {r["examples_per_sec"] * scale:.0f} | '
                 f'{r["fed_examples_per_sec"] * scale:.0f} | {r["flops_per_sec"] / 1e9:.1f} | '
                 f'{r["flops_per_sec"] / peak:.1%} |' +
                 (f' {r["flops_per_sec"] / torch_peak:.1%} |' if torch_peak else '') + ratios)
  if torch_rate:
    import torch
    for kind, rate in torch_rate.items():
      lines.append(f'| torch {torch.__version__} {kind} | {rate / config.batch_size:.2f} | '
                   f'{rate * scale:.0f} | | | |' + (' |' if torch_peak else '') +
                   ''.join(f' {rate / other:.2f}x |' for other in torch_rate.values()))
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    if not out.exists():
      out.write_text('# Benchmarks\n\nWritten by `scripts/benchmark.py`; newest last.\n')
    with out.open('a') as f:
      f.write('\n'.join(lines) + '\n')
    print(f'appended to {out}')
  if _RECORD.value:  # The raw record: every timed call, for tables built from several runs.
    record = {'date': date, 'config': _CONFIG.value.model.name, 'device': device,
              'jax_version': jax.__version__, 'allocator': runtime.allocator(),
              'xla_flags': flags_in_effect, 'batch_size': config.batch_size,
              'tokens_per_example': per_example, 'steps_per_call': _STEPS.value,
              'jax_matmul_peak': peak, 'torch_matmul_peak': torch_peak,
              'jax': {label: r for label, r in rows}, 'torch_seconds_per_step': torch_calls}
    with open(_RECORD.value, 'a') as f:
      f.write(json.dumps(record) + '\n')


if __name__ == '__main__':
  app.run(main)
