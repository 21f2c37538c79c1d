"""Timing a config's training step: the pieces scripts/benchmark.py and scripts/device_check.py
share (medians over every timed call, the matmul peak, the largest batch that fits, synthetic
images). No flags here, so tests and other scripts import it beside dl10_jax.main's.
"""

from __future__ import annotations

import ast
import contextlib
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
  """The CPU's model name, which a timing is only comparable within."""
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


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
  from dl10_jax.train.experiment import build_experiment
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
  from dl10_jax.train.experiment import build_experiment

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
  `config`'s model, on the same batches; under bfloat16 autocast where the config computes in
  bfloat16 (PyTorch's own mixed precision: matmuls and convolutions in bf16, the rest float32)."""
  import torch
  from dl10_jax.train.experiment import build_experiment
  sys.path.insert(0, str(ROOT / 'scripts'))
  import torch_twins
  torch.set_num_threads(os.cpu_count())
  exp = build_experiment(config)  # Resolves vocab_size / num_classes from the data.
  step, _ = torch_twins.make_step(exp.config, compile_model)
  it = exp.train_iterator()
  batches = [next(it) for _ in range(8)]

  bf16 = exp.config.dtype == 'bfloat16'

  def run(n):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
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
