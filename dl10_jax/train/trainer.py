"""The one training loop every experiment uses: config -> data -> model -> step -> metrics.

Read top to bottom: mesh, data, model + objective, state (fresh or restored), compiled steps, loop.
The loop touches the host only at log, eval and checkpoint points; everything else is dispatched
asynchronously, so the next batch is read while the device runs the current step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from etils import epath

from dl10_jax import config_lib, data, models, runtime
from dl10_jax.data import tokenizer as tokenizer_lib
from dl10_jax.errors import ConfigError, TrainingDiverged
from dl10_jax.models import hf_gpt2
from dl10_jax.train import (checkpoint, make_objective, optim, preemption, profiling, pruning,
                            sharding, throughput)
from dl10_jax.train.checkpoint import Checkpointer
from dl10_jax.train.objective import Objective
from dl10_jax.train.state import TrainState
from dl10_jax.train.writer import MetricWriter

def _check_finite(history: list[dict[str, float]], first_step: int, key: str) -> None:
  for i, metrics in enumerate(history):
    if not math.isfinite(metrics[key]):
      raise TrainingDiverged(f'{key} became {metrics[key]} at step {first_step + i}; lower '
                             'learning_rate, enable grad_clip_norm, or use dtype=float32')


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything built from a config before the loop: shared by training and the benchmarks."""
  config: ml_collections.ConfigDict  # Finalized: derived fields resolved.
  mesh: jax.sharding.Mesh
  splits: data.Splits
  objective: Objective
  schedule: optax.Schedule
  # (rng, batch) -> the state laid out on the mesh, jitted.
  init: Callable[[jax.Array, Any], TrainState]
  abstract_state: TrainState  # Shapes, dtypes and shardings of the state.
  train_step: Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]
  eval_step: Callable[[TrainState, Any], dict[str, jax.Array]]

  def example_batch(self) -> Any:
    return _example_batch(self.splits, self.config.batch_size, self.mesh)

  def train_iterator(self):
    return data.train_iterator(self.splits.train, self.config.batch_size, self.config.seed,
                               self.config.dataset.prefetch, self.splits.preprocess,
                               self.splits.augment)

  def eval_batches(self):
    return data.eval_batches(self.splits.eval, self.config.eval_batch_size,
                             self.splits.preprocess)


def _example_batch(splits: data.Splits, batch_size: int, mesh: jax.sharding.Mesh) -> Any:
  """A global batch of the training batch size, to trace shapes."""
  return sharding.to_global(next(data.eval_batches(splits.eval, batch_size, splits.preprocess)),
                            mesh)


def _resolve_model_fields(config: ml_collections.ConfigDict, splits: data.Splits) -> None:
  """Fills the model fields the data decides (-1: vocab_size, num_classes); checks the others."""
  model = config.model
  for field, value in (('vocab_size', splits.tokenizer and splits.tokenizer.vocab_size),
                       ('num_classes', splits.num_classes)):
    if field not in model or not value:
      continue
    if model[field] == -1:
      model[field] = value
    elif field == 'num_classes' and model[field] != value:
      raise ConfigError(f'model.num_classes={model[field]} but dataset {config.dataset.name!r} '
                        f'has {value} classes')
    elif field == 'vocab_size' and model[field] < value:
      raise ConfigError(f'model.vocab_size={model[field]} is smaller than the tokenizer\'s '
                        f'{value}; use -1 to take it from the data')


def saved_tokenizer(workdir: str | os.PathLike | None) -> data.Tokenizer | None:
  """The tokenizer a run in `workdir` was trained with, if it has one."""
  path = checkpoint.resolve_path(workdir) / 'tokenizer.json' if workdir else None
  return tokenizer_lib.from_json(path.read_text(encoding='utf-8')) if path and path.exists() \
      else None


def build_experiment(config: ml_collections.ConfigDict, devices: list[Any] | None = None,
                     workdir: str | os.PathLike | None = None) -> Experiment:
  """Mesh, data sources, model + objective, optimizer and the compiled steps for `config`.

  A text dataset is tokenized with the tokenizer saved in `workdir` if the run has one, else with
  that of an init_from=hf:DIR checkpoint, whose model shape the config then takes.
  """
  runtime.enable_compilation_cache(config.get('compilation_cache_dir', ''))
  mesh = sharding.make_mesh(config.mesh, devices)
  config = hf_gpt2.configure(config)
  splits = data.load(config.dataset,
                     saved_tokenizer(workdir) or hf_gpt2.tokenizer(config.init_from))
  config = config_lib.finalize(config, len(splits.train), sharding.batch_shards(mesh),
                               mesh.devices.flat[0].platform)
  _resolve_model_fields(config, splits)
  objective = make_objective(config, models.build(config.model, jnp.dtype(config.dtype)), splits)

  # State: laid out on the mesh by the rules of sharding.py (replicated on a data-only mesh);
  # shapes from eval_shape, so nothing is allocated twice.
  replicated = sharding.replicated(mesh)
  shapes = jax.eval_shape(objective.init_state, jax.random.PRNGKey(config.seed),
                          _example_batch(splits, config.batch_size, mesh))
  if 'batch_stats' in shapes.model_state and config.microbatch_size and \
      not config.ghost_batch_norm:
    raise ConfigError(
        f'model {config.model.name!r} has BatchNorm, and microbatch_size={config.microbatch_size} '
        'would normalise each micro-batch by its own statistics: set ghost_batch_norm=True to '
        'choose that (ghost batch norm), or microbatch_size=0 for whole-batch statistics')
  state_sharding = sharding.state_sharding(shapes, mesh)
  init = jax.jit(objective.init_state, out_shardings=state_sharding)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                shapes, state_sharding)

  # Compiled steps: the state's buffers are donated, so an update happens in place.
  batch_sharding = sharding.batch_sharding(mesh)
  train_step = jax.jit(objective.train_step, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(objective.eval_batch, in_shardings=(state_sharding, batch_sharding),
                      out_shardings=replicated)
  return Experiment(config, mesh, splits, objective, optim.learning_rate_schedule(config), init,
                    abstract_state, train_step, eval_step)


def evaluate(exp: Experiment, state: Any,
             eval_step: Callable[[Any, Any], Any] | None = None) -> dict[str, float]:
  """One pass over the eval split; sums stay on the device until the end.

  `eval_step` replaces `exp.eval_step` for another form of the model (int8 weights: `state` is
  then whatever that step reads).
  """
  eval_step = eval_step or exp.eval_step
  totals = None
  for batch in exp.eval_batches():
    sums = eval_step(state, sharding.to_global(batch, exp.mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  # Scalars as floats; array sums (feature moments of an image-quality metric) as numpy arrays.
  return exp.objective.summarize_eval({k: float(v) if np.ndim(v) == 0 else np.asarray(v)
                                       for k, v in jax.device_get(totals).items()})


# Crash-recovery tests: DL10_KILL_AT_STEP=N makes a run SIGKILL itself at the end of step N, once
# the checkpoints it has started are complete: a crash between checkpoints at an exact step,
# instead of at whatever step a watching process happens to catch. N:TERM sends SIGTERM instead
# (a preemption notice), saved at the next step boundary.
KILL_AT_STEP = 'DL10_KILL_AT_STEP'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       devices: list[Any] | None = None) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns final metrics."""
  workdir = checkpoint.resolve_path(workdir)
  exp = build_experiment(config, devices, workdir)
  config = exp.config
  _write_run_files(exp, workdir)
  # Data: an endless, checkpointable training iterator; state fresh or restored with its position.
  train_iter = exp.train_iterator()
  stream = _data_stream(exp)
  checkpointer = Checkpointer(workdir, config.keep_checkpoints)
  state, start_step = _initial_state(exp, workdir, checkpointer, train_iter, stream)
  progress = _Progress(exp, workdir, state, start_step)
  preemption_watch = preemption.Watch().install()  # SIGTERM: save at a step boundary, stop.
  kill_at, _, kill_signal = (os.environ.get(KILL_AT_STEP) or '-1').partition(':')
  kill_at_step = int(kill_at)  # Read once: nothing in the loop.
  num_steps = config.num_train_steps
  try:
    for step in range(start_step + 1, num_steps + 1):
      progress.begin_step(step)  # A profile starts at its first step.
      with progress.times('data_wait'):
        batch = sharding.to_global(next(train_iter), exp.mesh)
      with progress.times('dispatch'):
        state, metrics = exp.train_step(state, batch)
      progress.add(step, metrics, state)
      do_eval = step % config.eval_every_steps == 0 or step == num_steps
      preempted = preemption_watch.reached(step)  # Every process agrees on the step.
      do_save = step % config.checkpoint_every_steps == 0 or step == num_steps or preempted
      # Eval and checkpoint points log too: no NaN state is evaluated or saved unnoticed, and log
      # intervals restart where a resumed run restarts, so its logged losses match exactly.
      if step % config.log_every_steps == 0 or do_eval or do_save:
        progress.log_point(step)
      if do_eval:
        progress.eval_point(step, state)
      if do_save:
        checkpointer.save(step, state, {'iterator': train_iter.get_state(), 'stream': stream})
      if do_eval or do_save:  # Their time is kept out of the throughput.
        progress.restart_clock()
      if preempted and step < num_steps:
        raise preemption.Preempted(step, str(workdir))  # After `finally` has finished the save.
      if step == kill_at_step:
        _kill_self(checkpointer, kill_signal)
    if start_step >= num_steps:  # Already trained: report the final model again.
      progress.final.update(evaluate(exp, state))
  finally:
    checkpointer.close()  # Waits for the saves in flight.
    progress.close()
    preemption_watch.restore()
  return progress.final


def _kill_self(checkpointer: Checkpointer, kill_signal: str) -> None:
  """DL10_KILL_AT_STEP: SIGKILL once the started saves are complete, or a preemption notice."""
  if kill_signal == 'TERM':
    preemption.send_term_to_self()
    return
  checkpointer.close()
  os.kill(os.getpid(), signal.SIGKILL)


def _write_run_files(exp: Experiment, workdir: epath.Path) -> None:
  """config.json (the finalized config) and tokenizer.json: what sampling and resuming read."""
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(exp.config.to_json_best_effort(indent=2))
    if exp.splits.tokenizer is not None:  # Sampling and resuming use exactly this one.
      (workdir / 'tokenizer.json').write_text(exp.splits.tokenizer.to_json(), encoding='utf-8')


def _data_stream(exp: Experiment) -> dict[str, Any]:
  """What a saved iterator position means: the same position in another stream is another run."""
  config = exp.config
  return {'dataset': config.dataset.name, 'num_train_examples': len(exp.splits.train),
          'batch_size': config.batch_size, 'seed': config.seed,
          'process_count': jax.process_count()}


def _initial_state(exp: Experiment, workdir: epath.Path, checkpointer: Checkpointer,
                   train_iter: Any, stream: dict[str, Any]) -> tuple[TrainState, int]:
  """(state, step): restored from the newest checkpoint with the iterator's position, else fresh
  (with another run's parameters under init_from)."""
  config = exp.config

  def check(step: int) -> None:
    mismatch = checkpointer.mismatch(step, exp.abstract_state)
    if mismatch:
      raise ConfigError(f'the checkpoint of step {step} in {workdir} does not fit this config '
                        f'({mismatch}); use a new --workdir or the config it was trained with')

  restored = checkpointer.restore_latest(exp.abstract_state, check)
  if restored is None:
    state = exp.init(jax.random.PRNGKey(config.seed), exp.example_batch())
    if config.init_from:  # Fine-tuning: another run's parameters, this run's optimizer and step.
      state = exp.objective.load_pretrained(
          state, checkpoint.load_params(config.init_from, state.params, config.init_reinit),
          checkpoint.load_params(config.init_from, state.model_state, config.init_reinit,
                                 'model_state'))
    return state, 0
  start_step, state, data_state = restored
  saved = data_state['stream']
  if saved != stream:  # The saved position would point into another stream of batches.
    changes = ', '.join(f'{k} {saved.get(k)!r} there, {v!r} here'
                        for k, v in stream.items() if saved.get(k) != v)
    raise ConfigError(f'the checkpoint of step {start_step} in {workdir} was written for another '
                      f'data stream ({changes}); use a new --workdir')
  train_iter.set_state(data_state['iterator'])
  return state, start_step


class _Progress:
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


def run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The finalized config a run in `workdir` saved (derived fields such as num_classes resolved).

  Top-level fields added to config_lib.base_config after the run was saved take their defaults,
  which keep the behaviour the run was trained with: older runs still sample, evaluate, resume.
  """
  config_path = checkpoint.resolve_path(workdir) / 'config.json'
  if not config_path.is_file():
    raise ConfigError(f'{workdir} holds no trained run (no config.json); pass the --workdir of a '
                      'run of dl10_jax.main')
  saved = json.loads(config_path.read_text())
  defaults = config_lib.base_config().to_dict()
  return ml_collections.ConfigDict({**{k: v for k, v in defaults.items() if k not in saved},
                                    **saved})


def restore_run(workdir: str | os.PathLike,
                devices: list[Any] | None = None) -> tuple[Experiment, TrainState]:
  """The experiment of the run in `workdir` (its saved config and tokenizer) and its newest state."""
  workdir = checkpoint.resolve_path(workdir)
  config = run_config(workdir)
  config.progress_bar = False
  config.init_from = ''  # Its own checkpoint replaces what it started from (which may be gone).
  exp = build_experiment(config, devices, workdir)
  checkpointer = Checkpointer(workdir, config.keep_checkpoints)
  try:
    restored = checkpointer.restore_latest(exp.abstract_state)
    if restored is None:
      raise ConfigError(f'{workdir} holds no checkpoint yet; train it first (dl10_jax.main)')
    _, state, _ = restored
  finally:
    checkpointer.close()
  return exp, state
