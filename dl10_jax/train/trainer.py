"""The one training loop every experiment uses: config -> data -> model -> step -> metrics.

Read top to bottom: mesh, data, model + objective, state (fresh or restored), compiled steps, loop.
The loop touches the host only at log, eval and checkpoint points; everything else is dispatched
asynchronously, so the next batch is read while the device runs the current step.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from dl10_jax import config_lib, data, models
from dl10_jax.errors import ConfigError, TrainingDiverged
from dl10_jax.train import make_objective, optim, sharding
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
  init: Callable[[jax.Array, Any], TrainState]  # (rng, batch) -> replicated state, jitted.
  abstract_state: TrainState  # Shapes, dtypes and shardings of the state.
  train_step: Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]
  eval_step: Callable[[TrainState, Any], dict[str, jax.Array]]

  def example_batch(self) -> Any:
    return _example_batch(self.splits, self.config.batch_size, self.mesh)


def _example_batch(splits: data.Splits, batch_size: int, mesh: jax.sharding.Mesh) -> Any:
  """A global batch of the training batch size, to trace shapes."""
  return sharding.to_global(next(data.eval_batches(splits.eval, batch_size)), mesh)


def build_experiment(config: ml_collections.ConfigDict,
                     devices: list[Any] | None = None) -> Experiment:
  """Mesh, data sources, model + objective, optimizer and the compiled steps for `config`."""
  mesh = sharding.make_mesh(config.mesh, devices)
  splits = data.load(config.dataset)
  config = config_lib.finalize(config, len(splits.train), mesh.shape['data'],
                               mesh.devices.flat[0].platform)
  if splits.num_classes and config.model.get('num_classes', splits.num_classes) != \
      splits.num_classes:
    raise ConfigError(f'model.num_classes={config.model.num_classes} but dataset '
                      f'{config.dataset.name!r} has {splits.num_classes} classes')
  objective = make_objective(config, models.build(config.model, jnp.dtype(config.dtype)))

  # State: replicated on the mesh; shapes from eval_shape, so nothing is allocated twice.
  replicated = sharding.replicated(mesh)
  init = jax.jit(objective.init_state, out_shardings=replicated)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(config.seed),
                          _example_batch(splits, config.batch_size, mesh))
  state_sharding = jax.tree.map(lambda _: replicated, shapes)
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


def evaluate(exp: Experiment, state: TrainState) -> dict[str, float]:
  """One pass over the eval split; sums stay on the device until the end."""
  totals = None
  for batch in data.eval_batches(exp.splits.eval, exp.config.eval_batch_size):
    sums = exp.eval_step(state, sharding.to_global(batch, exp.mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return exp.objective.summarize_eval({k: float(v) for k, v in jax.device_get(totals).items()})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       devices: list[Any] | None = None) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns final metrics."""
  workdir = pathlib.Path(workdir)
  exp = build_experiment(config, devices)
  config, mesh, objective = exp.config, exp.mesh, exp.objective
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))

  # Data: an endless, checkpointable training iterator; state fresh or restored with its position.
  train_iter = data.train_iterator(exp.splits.train, config.batch_size, config.seed,
                                   config.dataset.prefetch)
  # What the saved iterator position means: the same position in another stream is another run.
  stream = {'dataset': config.dataset.name, 'num_train_examples': len(exp.splits.train),
            'batch_size': config.batch_size, 'seed': config.seed,
            'process_count': jax.process_count()}
  checkpointer = Checkpointer(workdir, config.keep_checkpoints)
  start_step = checkpointer.latest_step()
  if start_step is None:
    state, start_step = exp.init(jax.random.PRNGKey(config.seed), exp.example_batch()), 0
  else:
    mismatch = checkpointer.mismatch(start_step, exp.abstract_state)
    if mismatch:
      raise ConfigError(f'the checkpoint of step {start_step} in {workdir} does not fit this config '
                        f'({mismatch}); use a new --workdir or the config it was trained with')
    state, data_state = checkpointer.restore(start_step, exp.abstract_state)
    saved = data_state['stream']
    if saved != stream:  # The saved position would point into another stream of batches.
      changes = ', '.join(f'{k} {saved.get(k)!r} there, {v!r} here'
                          for k, v in stream.items() if saved.get(k) != v)
      raise ConfigError(f'the checkpoint of step {start_step} in {workdir} was written for another '
                        f'data stream ({changes}); use a new --workdir')
    train_iter.set_state(data_state['iterator'])

  writer = MetricWriter(workdir)
  num_steps = config.num_train_steps
  bar = tqdm.tqdm(total=num_steps, initial=start_step, unit='step', dynamic_ncols=True,
                  disable=not config.progress_bar or jax.process_index() != 0)
  if start_step:
    bar.write(f'Resumed from the checkpoint of step {start_step} in {workdir}')
  pending: list[dict[str, jax.Array]] = []  # Per-step metrics since the last log, on device.
  last_log_step = start_step
  timer_step, timer_start = start_step, time.perf_counter()  # Throughput excludes compile + eval.
  final: dict[str, float] = {}
  try:
    for step in range(start_step + 1, num_steps + 1):
      batch = sharding.to_global(next(train_iter), mesh)
      state, metrics = exp.train_step(state, batch)
      pending.append(metrics)
      if step == start_step + 1:  # The first step compiles: start the throughput clock after it.
        jax.block_until_ready(metrics)
        timer_step, timer_start = step, time.perf_counter()

      do_eval = step % config.eval_every_steps == 0 or step == num_steps
      do_save = step % config.checkpoint_every_steps == 0 or step == num_steps
      # Eval and checkpoint points log too: no NaN state is evaluated or saved unnoticed, and log
      # intervals restart where a resumed run restarts, so its logged losses match exactly.
      if step % config.log_every_steps == 0 or do_eval or do_save:
        history = jax.device_get(pending)  # The one host sync per log interval.
        _check_finite(history, last_log_step + 1, objective.loss_metric)
        now = time.perf_counter()
        steps_per_sec = (step - timer_step) / (now - timer_start) if step > timer_step else 0.0
        summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
        summary.update(learning_rate=float(exp.schedule(step - 1)), steps_per_sec=steps_per_sec,
                       examples_per_sec=steps_per_sec * config.batch_size)
        writer.write(step, summary)
        bar.set_postfix(loss=f'{summary[objective.loss_metric]:.4f}',
                        ex_per_s=f'{summary["examples_per_sec"]:.0f}', refresh=False)
        bar.update(step - last_log_step)
        final.update(summary)
        pending, last_log_step, timer_step, timer_start = [], step, step, now

      if do_eval or do_save:  # Their time is kept out of the throughput.
        if do_eval:
          eval_metrics = evaluate(exp, state)
          writer.write(step, eval_metrics)
          bar.write(f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in eval_metrics.items()))
          final.update(eval_metrics)
        if do_save:
          checkpointer.save(step, state, {'iterator': train_iter.get_state(), 'stream': stream})
        timer_start = time.perf_counter()

    if start_step >= num_steps:  # Already trained: report the final model again.
      final.update(evaluate(exp, state))
  finally:
    bar.close()
    checkpointer.close()
    writer.close()
  return final
