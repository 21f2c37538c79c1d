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

import ast
import contextlib
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def call_times(fn, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of fn() (which must block until its work is done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def jax_matmul_flops(n: int = 2048) -> float:
  import jax
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  return 2 * n**3 / statistics.median(call_times(lambda: matmul(a).block_until_ready(), 5))


def step_flops(config) -> float:
  """Model FLOPs of one train step: the objective's count where it has one (language models:
  6 per parameter per token + attention), else XLA's cost analysis of the compiled step.

  XLA counts a loop body once, so the micro-batch loop (performance only) is turned off for the
  count, and recurrent models (a loop over time) need the objective's count.
  """
  import jax
  from dl10_jax.train.trainer import build_experiment
  config = apply_overrides(config, 'microbatch_size=0')
  exp = build_experiment(config)
  batch = exp.example_batch()
  state = jax.eval_shape(exp.init, jax.random.PRNGKey(0), batch)
  counted = exp.objective.flops_per_step(state.params)
  if counted:
    return counted
  cost = exp.train_step.lower(state, batch).compile().cost_analysis()
  per_device = (cost[0] if isinstance(cost, list) else cost).get('flops', float('nan'))
  return per_device * exp.mesh.size  # The cost analysis is of one device's partition.


def jax_step_throughput(config, steps: int, warmup: int, repeats: int,
                        flops: float | None = None, profile_dir: str = '') -> dict[str, float]:
  """Seconds per step of each timed call, on batches already on the device and fed by grain, and
  the rates of their medians; with `profile_dir`, the timed calls (each kind named) are traced
  there."""
  import jax
  from dl10_jax.train import sharding
  from dl10_jax.train.trainer import build_experiment

  exp = build_experiment(config)
  it = exp.train_iterator()
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
  with jax.profiler.trace(profile_dir) if profile_dir else contextlib.nullcontext():
    with jax.profiler.TraceAnnotation('device_batches'):  # Names in the trace; free without one.
      calls = [t / steps for t in call_times(lambda: run(steps), repeats)]
    with jax.profiler.TraceAnnotation('fed_by_grain'):
      fed_calls = [t / steps for t in call_times(lambda: run_fed(steps), repeats)]
  seconds, fed_seconds = statistics.median(calls), statistics.median(fed_calls)
  return {'seconds_per_step': calls, 'fed_seconds_per_step': fed_calls,
          'steps_per_sec': 1 / seconds,
          'examples_per_sec': exp.config.batch_size / seconds,
          'fed_examples_per_sec': exp.config.batch_size / fed_seconds,
          'flops_per_sec': flops / seconds}


def torch_step_seconds(config, steps: int, warmup: int, repeats: int,
                       compile_model: bool = False) -> list[float]:
  """Seconds per step of each timed call of the PyTorch twin (scripts/torch_twins.py) of
  `config`'s model, on the same batches."""
  import torch
  from dl10_jax.train.trainer import build_experiment
  sys.path.insert(0, str(ROOT / 'scripts'))
  import torch_twins
  torch.set_num_threads(os.cpu_count())
  exp = build_experiment(config)  # Resolves vocab_size / num_classes from the data.
  step, _ = torch_twins.make_step(exp.config, compile_model)
  it = exp.train_iterator()
  batches = [next(it) for _ in range(8)]

  def run(n):
    for i in range(n):
      step(batches[i % len(batches)])

  run(warmup)
  return [t / steps for t in call_times(lambda: run(steps), repeats)]


def is_out_of_memory(error: BaseException) -> bool:
  """XLA's allocation failure (RESOURCE_EXHAUSTED on GPUs and TPUs), as opposed to a real bug."""
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def largest_batch_throughput(config, batch_sizes: list[int], steps: int, warmup: int,
                             repeats: int, deadline: float, on_try=None) -> list[dict]:
  """jax_step_throughput at each of `batch_sizes` (ascending) until one runs out of device memory
  or the next would not finish before `deadline` (time.monotonic()); the last row that fitted is
  the largest batch that fits. Ascending, so that a time limit still leaves a figure.

  Each try is a row {'batch_size', 'seconds', and the throughput or 'error'}, passed to `on_try`
  as it ends, so that a run killed at its time limit has logged the tries before.
  """
  import gc
  import jax
  rows = []
  for batch_size in sorted(batch_sizes):
    if rows and time.monotonic() + 1.5 * rows[-1]['seconds'] > deadline:
      break  # The next (larger) try would likely not end in time.
    start = time.monotonic()
    row = {'batch_size': batch_size}
    try:
      row.update(jax_step_throughput(apply_overrides(config, f'batch_size={batch_size}'), steps,
                                     warmup, repeats))
    except Exception as e:  # noqa: BLE001 - anything but OOM is re-raised below.
      if not is_out_of_memory(e):
        raise
      row['error'] = 'out of memory: ' + str(e).splitlines()[0][:200]
    row['seconds'] = time.monotonic() - start
    rows.append(row)
    if on_try:
      on_try(row)
    gc.collect()
    jax.clear_caches()
    if 'error' in row:
      break
  return rows


@contextlib.contextmanager
def synthetic_images(shape: tuple[int, int, int], num_classes: int, records: int):
  """Inside, every experiment reads `records` random uint8 images of `shape` (H, W, C) with random
  labels instead of its dataset: a model's step speed at sizes no dataset on the machine has
  (ResNet-50 at 224 x 224), with no data to carry to a lent accelerator."""
  import dataclasses
  import numpy as np
  from dl10_jax import data
  from dl10_jax.data import sources
  rng = np.random.default_rng(0)
  source = sources.ArraySource({
      'image': rng.integers(0, 256, (records, *shape), dtype=np.uint8),
      'label': rng.integers(0, num_classes, (records,), dtype=np.int32)})
  splits = sources.Splits(source, source, num_classes, preprocess=sources.scale_images)
  real_load = data.load
  data.load = lambda config, tokenizer=None: dataclasses.replace(splits)
  try:
    yield
  finally:
    data.load = real_load


def _cpu_name() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def _tokens_per_example(config) -> int:
  return config.dataset.block_size if config.objective == 'language_model' else 0


def main(argv):
  del argv
  import jax
  from dl10_jax import runtime
  config = _CONFIG.value
  device = f'{jax.devices()[0].device_kind} x{jax.device_count()}'
  if jax.default_backend() == 'cpu':
    device = f'{_cpu_name()}, {os.cpu_count()} cores'
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
