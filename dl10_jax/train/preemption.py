"""Preemption: SIGTERM (a spot VM, a cluster scheduler) ends a run at a step boundary, saved.

One process: a SIGTERM handler sets a flag that the loop reads once a step (a Python bool, no host
sync). Several processes: jax.distributed.initialize() starts jax's preemption sync manager, which
catches SIGTERM itself, tells every process, and picks one step (the largest any has reached, plus
one) at which all of them save; asking it costs a mutex (about 0.2 us), not a collective, a step.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils

# What main exits with once the checkpoint is saved: EX_TEMPFAIL of sysexits.h, "try again". A retry
# loop tells it from success (0), a crash (1), a command-line or config mistake (2) and a signal.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """The run saved its checkpoint at `step` after a SIGTERM and stopped; rerunning resumes it."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f'preempted: saved the checkpoint of step {step} in {workdir}; rerun the same '
                     'command to resume')
    self.step = step


class Watch:
  """Between install() and restore(), `reached(step)` says whether to save and stop after `step`.

  A second SIGTERM to one process ends it at once, as if no handler were installed. Off the main
  thread (where Python cannot take signals) nothing is installed.
  """

  def __init__(self):
    self._flag = False
    self._previous = None
    self._sync = jax.process_count() > 1 and _sync_manager_running()

  def install(self) -> Watch:
    # jax's sync manager has its own handler: keep it.
    if not self._sync and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self._flag:
      self.restore()
      signal.raise_signal(signum)
    self._flag = True

  def reached(self, step: int) -> bool:
    if self._sync:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag


def _sync_manager_running() -> bool:
  from jax._src import distributed
  return distributed.global_state.preemption_sync_manager is not None


# Tests: DL10_KILL_AT_STEP=N:TERM makes the trainer send itself SIGTERM at the end of step N.
def send_term_to_self() -> None:
  os.kill(os.getpid(), signal.SIGTERM)
