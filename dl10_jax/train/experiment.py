"""What a config builds before the loop: mesh, data, model + objective, compiled steps.

Shared by training (trainer.py), sampling and evaluation of a saved run (`restore_run`), and the
benchmarks, so every one of them measures or uses exactly the step that trains.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dl10_jax import config_lib, data, models, runtime
from dl10_jax.data import tokenizer as tokenizer_lib
from dl10_jax.errors import ConfigError
from dl10_jax.models import hf_gpt2
from dl10_jax.train import checkpoint, make_objective, optim, sharding
from dl10_jax.train.checkpoint import Checkpointer
from dl10_jax.train.objective import Objective
from dl10_jax.train.state import TrainState


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
  runtime.use_cpu_devices(config.get('cpu_devices', 0))
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
