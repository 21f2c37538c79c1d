"""The one training loop every experiment uses: config -> data -> model -> step -> metrics.

Read top to bottom: the experiment (experiment.py: mesh, data, model + objective, compiled steps),
state (fresh or restored), loop. The loop touches the host only at log, eval and checkpoint points
(progress.py); everything else is dispatched asynchronously, so the next batch is read while the
device runs the current step.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import jax
import ml_collections
from etils import epath

from dl10_jax.errors import ConfigError
from dl10_jax.train import checkpoint, preemption, sharding
from dl10_jax.train.checkpoint import Checkpointer
from dl10_jax.train.experiment import Experiment, build_experiment, evaluate
from dl10_jax.train.progress import Progress
from dl10_jax.train.state import TrainState

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
  progress = Progress(exp, workdir, state, start_step)
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
