"""The one training loop every experiment uses: config -> data -> model -> step -> metrics.

Read top to bottom: mesh, data, model + objective, state (fresh or restored), compiled steps, loop.
The loop touches the host only at log, eval and checkpoint points; everything else is dispatched
asynchronously, so the next batch is read while the device runs the current step.
"""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from dl10_jax import config_lib, data, models
from dl10_jax.errors import ConfigError, TrainingDiverged
from dl10_jax.train import make_objective, optim, sharding
from dl10_jax.train.checkpoint import Checkpointer
from dl10_jax.train.writer import MetricWriter

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def evaluate(objective, eval_step, state, source, config, mesh) -> dict[str, float]:
  """One pass over the eval split; sums stay on the device until the end."""
  totals = None
  for batch in data.eval_batches(source, config.eval_batch_size):
    sums = eval_step(state, sharding.to_global(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return objective.summarize_eval({k: float(v) for k, v in jax.device_get(totals).items()})


def _check_finite(history: list[dict[str, float]], first_step: int, key: str) -> None:
  for i, metrics in enumerate(history):
    if not math.isfinite(metrics[key]):
      raise TrainingDiverged(f'{key} became {metrics[key]} at step {first_step + i}; lower '
                             'learning_rate, enable grad_clip_norm, or use dtype=float32')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       devices: list[Any] | None = None) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns final metrics."""
  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh(config.mesh, devices)
  splits = data.load(config.dataset)
  config = config_lib.finalize(config, len(splits.train), mesh.shape['data'])
  if splits.num_classes and config.model.get('num_classes', splits.num_classes) != \
      splits.num_classes:
    raise ConfigError(f'model.num_classes={config.model.num_classes} but dataset '
                      f'{config.dataset.name!r} has {splits.num_classes} classes')
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))

  # Model and objective.
  model = models.build(config.model, DTYPES[config.dtype])
  objective = make_objective(config, model)
  tx = optim.make_optimizer(config)
  schedule = optim.learning_rate_schedule(config)

  # Data: an endless, checkpointable training iterator.
  train_iter = data.train_iterator(splits.train, config.batch_size, config.seed,
                                   config.dataset.prefetch)
  example = sharding.to_global(next(data.eval_batches(splits.eval, config.batch_size)), mesh)

  # State: shapes from eval_shape, replicated on the mesh; restored if the workdir has a checkpoint.
  replicated = sharding.replicated(mesh)
  init = jax.jit(lambda rng, batch: objective.init_state(rng, batch, tx),
                 out_shardings=replicated)
  abstract_state = jax.eval_shape(init, jax.random.PRNGKey(config.seed), example)
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
  checkpointer = Checkpointer(workdir, config.keep_checkpoints)
  start_step = checkpointer.latest_step()
  if start_step is None:
    state = init(jax.random.PRNGKey(config.seed), example)
    start_step = 0
  else:
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
        state_sharding)
    state, data_state = checkpointer.restore(start_step, abstract)
    train_iter.set_state(data_state)

  # Compiled steps: the state's buffers are donated, so an update happens in place.
  batch_sharding = sharding.batch_sharding(mesh)
  train_step = jax.jit(objective.train_step, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(objective.eval_step, in_shardings=(state_sharding, batch_sharding),
                      out_shardings=replicated)

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
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      if step == start_step + 1:  # The first step compiles: start the throughput clock after it.
        jax.block_until_ready(metrics)
        timer_step, timer_start = step, time.perf_counter()

      if step % config.log_every_steps == 0 or step == num_steps:
        history = jax.device_get(pending)  # The one host sync per log interval.
        _check_finite(history, last_log_step + 1, objective.loss_metric)
        now = time.perf_counter()
        steps_per_sec = (step - timer_step) / (now - timer_start) if step > timer_step else 0.0
        summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
        summary.update(learning_rate=float(schedule(step - 1)), steps_per_sec=steps_per_sec,
                       examples_per_sec=steps_per_sec * config.batch_size)
        writer.write(step, summary)
        bar.set_postfix(loss=f'{summary[objective.loss_metric]:.4f}',
                        ex_per_s=f'{summary["examples_per_sec"]:.0f}', refresh=False)
        bar.update(step - last_log_step)
        final.update(summary)
        pending, last_log_step, timer_step, timer_start = [], step, step, now

      if step % config.eval_every_steps == 0 or step == num_steps:
        eval_start = time.perf_counter()
        eval_metrics = evaluate(objective, eval_step, state, splits.eval, config, mesh)
        writer.write(step, eval_metrics)
        bar.write(f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in eval_metrics.items()))
        final.update(eval_metrics)
        timer_start += time.perf_counter() - eval_start

      if step % config.checkpoint_every_steps == 0 or step == num_steps:
        checkpointer.save(step, state, train_iter.get_state())

    if start_step >= num_steps:  # Already trained: report the final model again.
      final.update(evaluate(objective, eval_step, state, splits.eval, config, mesh))
  finally:
    bar.close()
    checkpointer.close()
    writer.close()
  return final
