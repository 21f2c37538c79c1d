"""Where a training step's time goes: jax.profiler traces of chosen steps, and a host-side
breakdown of every log interval that costs no extra host sync.

The breakdown splits the host's wall time per step (1 / steps_per_sec, less the loop's own
bookkeeping) into three measured parts, in seconds per step:
  time_data_wait: waiting for the next batch (the input pipeline and its transfer to the mesh);
  time_dispatch: inside the jitted step's call (argument checks, enqueueing the work; a runtime
    whose queue of launched work is full blocks here too);
  time_device: blocked at the log point's device_get on device work the host had run ahead of.
Dispatch is asynchronous, so the device computes while the host waits for data or dispatches:
time_device is the device time that nothing on the host hid. Near zero, the device waits for the
host (input-bound if data_wait_fraction is large, else dispatch-bound); large, the device is the
limit. data_wait_fraction is time_data_wait's share of the wall time.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
from etils import epath

from dl10_jax import config_lib

PARTS = ('data_wait', 'dispatch', 'device')


class StepTimes:
  """Host seconds spent in each of PARTS since the last reset (the throughput clock's start)."""

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    self._seconds = dict.fromkeys(PARTS, 0.0)
    self._part, self._start = '', 0.0

  def __call__(self, part: str) -> StepTimes:
    """`with times('dispatch'): ...` adds the block's wall time to that part."""
    self._part = part
    return self

  def __enter__(self) -> None:
    self._start = time.perf_counter()

  def __exit__(self, *exc: Any) -> None:
    self._seconds[self._part] += time.perf_counter() - self._start

  def summary(self, steps: int, wall_seconds: float) -> dict[str, float]:
    """Seconds per step of each part, and the share of the wall time spent waiting for data."""
    per_step = {f'time_{part}': s / steps if steps else 0.0 for part, s in self._seconds.items()}
    fraction = self._seconds['data_wait'] / wall_seconds if steps and wall_seconds > 0 else 0.0
    return {**per_step, 'data_wait_fraction': fraction}


def trace_dir(workdir: os.PathLike | str) -> str:
  """WORKDIR/profile for process 0; WORKDIR/profile/process_N for the others (processes of one
  host would otherwise write the same <hostname>.xplane.pb)."""
  index = jax.process_index()
  path = epath.Path(workdir) / 'profile'
  return str(path / f'process_{index}' if index else path)


class Profile:
  """A jax.profiler trace of steps START .. START+COUNT-1 (config.profile_steps) of a run that
  starts after `start_step`; a run resumed past START traces nothing. Each traced step is marked
  (StepTraceAnnotation), so that the profile's overview and step-time graph find the steps."""

  def __init__(self, profile_steps: str, workdir: os.PathLike | str, start_step: int):
    window = config_lib.profile_window(profile_steps)
    self._first, self._last = (window[0], sum(window) - 1) if window else (0, -1)
    if self._first <= start_step:
      self._first, self._last = 0, -1
    self._dir, self.active = trace_dir(workdir), False
    self._step_mark: jax.profiler.StepTraceAnnotation | None = None

  def begin_step(self, step: int) -> bool:
    """Starts the trace before its first step's batch is read, and marks each traced step's
    start; True if the trace started."""
    started = step == self._first
    if started:
      jax.profiler.start_trace(self._dir)
      self.active = True
    if self.active:
      self._step_mark = jax.profiler.StepTraceAnnotation('train', step_num=step)
      self._step_mark.__enter__()
    return started

  def end_step(self, step: int, state: Any) -> bool:
    """Marks a traced step's end; after the last one, waits for its device work (else the trace
    ends before the work it dispatched ran), then writes the trace. True if it did."""
    if not self.active:
      return False
    self._end_mark()
    if step != self._last:
      return False
    jax.block_until_ready(state)
    self.stop()
    return True

  def stop(self) -> None:
    """Writes a trace still running (a run that raised or stopped inside the window)."""
    if self.active:
      self._end_mark()
      self.active = False
      jax.profiler.stop_trace()

  def _end_mark(self) -> None:
    if self._step_mark is not None:
      self._step_mark.__exit__(None, None, None)
      self._step_mark = None
