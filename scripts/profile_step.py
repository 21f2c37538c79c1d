"""Where a config's training step spends its time on this backend: a jax.profiler trace of a few
steps, summed per XLA operation kind.

  python scripts/profile_step.py --config configs/resnet.py
  python scripts/profile_step.py --config configs/lstm.py --steps 5 --top 15 --json out.json

Prints the wall time per step, the time each kind of thunk ran (summed over the runtime's worker
threads: `ynn_fusion` are YNNPACK's matmuls and convolutions, `*_fusion` XLA's own loops), and the
busy fraction: thunk time over wall time x the cores this process may use. A busy fraction well
under 1 means the step is a chain of small operations that leave cores idle, not a slow kernel.
Tracing costs a few percent.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
from step_timing import jax_step_throughput  # noqa: E402  (adds ROOT: the configs import dl10_jax)

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/cnn.py', 'Experiment config.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Traced steps of each kind (after 3 untraced ones).')
_TOP = flags.DEFINE_integer('top', 20, 'Operation kinds to list.')
_JSON = flags.DEFINE_string('json', '', 'Also write the summary to this JSON file.')

_WORKER_LINE = re.compile(r'XLAEigen|XLAExecute')  # XLA:CPU's threads in the host plane.


def op_kind(name: str) -> str:
  """'transpose_copy_fusion.26' -> 'transpose_copy_fusion': one row per kind, not per instance."""
  return re.sub(r'\.\d+$', '', name)


def summarise(xspace_file: str, steps: int) -> dict:
  """Milliseconds of thread time per step per operation kind, from one trace."""
  import jax
  per_kind, calls = collections.Counter(), collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(xspace_file).planes:
    for line in plane.lines:
      if not _WORKER_LINE.search(line.name):
        continue
      for event in line.events:
        # The executor's own spans (waiting, awaiting the pool) enclose the operations, and so
        # does a loop's or a call's span those of its body.
        if event.name.startswith(('ThunkExecutor', 'SlinkyThreadPool', 'end: ', 'while',
                                  'conditional', 'call')):
          continue
        per_kind[op_kind(event.name)] += event.duration_ns / 1e6 / steps
        calls[op_kind(event.name)] += 1 / steps
  return {'ms_per_step': dict(per_kind.most_common()), 'calls_per_step': dict(calls)}


def main(argv):
  del argv
  steps = _STEPS.value
  with tempfile.TemporaryDirectory() as trace_dir:
    # Traces `steps` steps on batches already on the device, then `steps` fed by the input
    # pipeline (the same operations); flops=1 skips the FLOP count's extra compile.
    timing = jax_step_throughput(_CONFIG.value, steps, warmup=3, repeats=1, flops=1.0,
                                 profile_dir=trace_dir)
    traced_steps = 2 * steps
    summary = summarise(next(pathlib.Path(trace_dir).rglob('*.xplane.pb')).as_posix(),
                        traced_steps)
  wall_ms = (timing['seconds_per_step'][0] + timing['fed_seconds_per_step'][0]) / 2 * 1e3
  busy_ms = sum(summary['ms_per_step'].values())
  cores = len(os.sched_getaffinity(0))
  summary.update(config=_CONFIG.value.model.name, wall_ms_per_step=wall_ms, cores=cores,
                 busy_fraction=busy_ms / (wall_ms * cores))
  print(f'{summary["config"]}: {wall_ms:.1f} ms/step; operations ran {busy_ms:.1f} thread-ms '
        f'on {cores} cores (busy {summary["busy_fraction"]:.0%})')
  print('| operation kind | ms/step (thread time) | share | calls/step |\n|---|---|---|---|')
  for kind, ms in list(summary['ms_per_step'].items())[:_TOP.value]:
    print(f'| {kind} | {ms:.2f} | {ms / busy_ms:.0%} | {summary["calls_per_step"][kind]:.0f} |')
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(summary, indent=1))


if __name__ == '__main__':
  app.run(main)
