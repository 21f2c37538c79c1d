"""optax optimizers and learning-rate schedules from the config's recipe fields."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The rate at update t (0-based) over `num_train_steps`; also what the loop logs."""
  lr, steps = config.learning_rate, config.num_train_steps
  if config.schedule == 'constant':
    return optax.constant_schedule(lr)
  if config.schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, decay_steps=steps)
  return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, decay_steps=steps)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer named by `config.optimizer` (values checked by config_lib.finalize)."""
  schedule = learning_rate_schedule(config)
  if config.optimizer == 'adam':
    tx = optax.adam(schedule)
  elif config.optimizer == 'adamw':  # Decay matrices and embeddings, not biases or norm scales.
    tx = optax.adamw(schedule, weight_decay=config.weight_decay,
                     mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
  else:
    tx = optax.sgd(schedule, momentum=config.momentum or None)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
