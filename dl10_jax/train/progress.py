"""What the training loop does on the host, kept apart so that the loop reads as the algorithm."""

from __future__ import annotations

import math
import time

import jax
import numpy as np
import tqdm
from etils import epath

from dl10_jax.errors import TrainingDiverged
from dl10_jax.train import profiling, pruning, throughput
from dl10_jax.train.experiment import Experiment, evaluate
from dl10_jax.train.state import TrainState
from dl10_jax.train.writer import MetricWriter


def _check_finite(history: list[dict[str, float]], first_step: int, key: str) -> None:
  for i, metrics in enumerate(history):
    if not math.isfinite(metrics[key]):
      raise TrainingDiverged(f'{key} became {metrics[key]} at step {first_step + i}; lower '
                             'learning_rate, enable grad_clip_norm, or use dtype=float32')


class Progress:
  """The loop's host side: per-step metrics kept on the device until a log point, the throughput
  clock and its breakdown, a profile of chosen steps (profiling.py), the progress bar and the
  metric writer; `final` holds the newest value of each metric."""

  def __init__(self, exp: Experiment, workdir: epath.Path, state: TrainState, start_step: int):
    config = exp.config
    self._exp, self._workdir = exp, workdir
    self._writer = MetricWriter(workdir)
    self._flops_per_step = exp.objective.flops_per_step(state.params)
    self._peak = throughput.peak_flops() if self._flops_per_step else None
    self._bar = tqdm.tqdm(total=config.num_train_steps, initial=start_step, unit='step',
                          dynamic_ncols=True,
                          disable=not config.progress_bar or jax.process_index() != 0)
    self._start_step = start_step
    self._pending: list[dict[str, jax.Array]] = []  # Per-step metrics since the last log.
    self._last_log_step = start_step
    # Throughput excludes compile + eval.
    self._timer_step, self._timer_start = start_step, time.perf_counter()
    self.times = profiling.StepTimes()  # Parts of the clock's time, measured by the loop.
    self._profile = profiling.Profile(config.get('profile_steps', ''), workdir, start_step)
    self.final: dict[str, float] = {}
    if start_step:
      self._bar.write(f'Resumed from the checkpoint of step {start_step} in {workdir}')
    elif config.init_from:  # Step 0: the loaded model on this run's data, before fine-tuning.
      eval_metrics = evaluate(exp, state)
      self._writer.write(0, eval_metrics)
      self._bar.write('step 0 (from init_from): ' +
                      ', '.join(f'{k}={v:.4f}' for k, v in eval_metrics.items()))

  def begin_step(self, step: int) -> None:
    if self._profile.begin_step(step):  # Tracing's own start is kept out of the throughput.
      self._restart_clock_at(step - 1)

  def add(self, step: int, metrics: dict[str, jax.Array], state: TrainState) -> None:
    """Keeps a step's metrics on the device; the first step compiles, so the clock starts after."""
    self._pending.append(metrics)
    if step == self._start_step + 1:
      jax.block_until_ready(metrics)
      self._restart_clock_at(step)
    if self._profile.end_step(step, state):  # Writing the trace is kept out of the throughput.
      self._restart_clock_at(step)

  def log_point(self, step: int) -> None:
    """The one host sync per log interval: the mean of each metric, throughput, a NaN check."""
    exp, config = self._exp, self._exp.config
    with self.times('device'):
      history = jax.device_get(self._pending)
    _check_finite(history, self._last_log_step + 1, exp.objective.loss_metric)
    now = time.perf_counter()
    steps_per_sec = ((step - self._timer_step) / (now - self._timer_start)
                     if step > self._timer_step else 0.0)
    summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
    summary.update(learning_rate=float(exp.schedule(step - 1)), steps_per_sec=steps_per_sec,
                   examples_per_sec=steps_per_sec * config.batch_size,
                   **exp.objective.throughput(steps_per_sec),
                   **self.times.summary(step - self._timer_step, now - self._timer_start))
    if self._flops_per_step:
      summary.update(model_flops_per_sec=self._flops_per_step * steps_per_sec,
                     mfu=self._flops_per_step * steps_per_sec / self._peak)
    self._writer.write(step, summary)
    self._bar.set_postfix(loss=f'{summary[exp.objective.loss_metric]:.4f}',
                          ex_per_s=f'{summary["examples_per_sec"]:.0f}', refresh=False)
    self._bar.update(step - self._last_log_step)
    self.final.update(summary)
    self._pending, self._last_log_step = [], step
    self._timer_step, self._timer_start = step, now
    self.times.reset()

  def eval_point(self, step: int, state: TrainState) -> None:
    """The eval split's metrics (and the objective's artifacts: sample grids) for `state`."""
    exp = self._exp
    eval_metrics = evaluate(exp, state)
    if exp.config.pruning.sparsity:  # What the weights hold, not what the schedule asks.
      eval_metrics['sparsity'] = pruning.sparsity(state.params)
    self._writer.write(step, eval_metrics)
    exp.objective.write_eval_artifacts(state, step, self._workdir, self._writer)
    self._bar.write(f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in eval_metrics.items()))
    self.final.update(eval_metrics)

  def restart_clock(self) -> None:
    self._timer_start = time.perf_counter()
    self.times.reset()

  def _restart_clock_at(self, step: int) -> None:
    """The throughput counts from the end of `step`, away from a log point too."""
    self._timer_step = step
    self.restart_clock()

  def close(self) -> None:
    self._profile.stop()
    self._bar.close()
    self._writer.close()
