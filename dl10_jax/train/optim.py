"""optax optimizers and learning-rate schedules from the config's recipe fields."""

from __future__ import annotations

import jax
import ml_collections
import optax

from dl10_jax.train import pruning


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The rate at update t (0-based) over `num_train_steps`; also what the loop logs."""
  lr, steps = config.learning_rate, config.num_train_steps
  if config.schedule == 'constant':
    return optax.constant_schedule(lr)
  if config.schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, decay_steps=steps)
  return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, decay_steps=steps)


def _matrices(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer named by `config.optimizer` (values checked by config_lib.finalize)."""
  schedule = learning_rate_schedule(config)
  if config.optimizer == 'adam':
    tx = optax.adam(schedule, b2=config.adam_b2)
  elif config.optimizer == 'adamw':  # Decay matrices and embeddings, not biases or norm scales.
    tx = optax.adamw(schedule, b2=config.adam_b2, weight_decay=config.weight_decay,
                     mask=_matrices)
  else:  # L2 weight decay on matrices and kernels (not biases or BN) before the momentum.
    tx = optax.sgd(schedule, momentum=config.momentum or None,
                   nesterov=config.get('nesterov', False) and config.momentum > 0)
    if config.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=_matrices), tx)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  if config.pruning.sparsity > 0:  # Last: it sets the final update of each pruned weight.
    p = config.pruning
    tx = optax.chain(tx, pruning.magnitude_pruning(p.sparsity, p.begin_step, p.end_step,
                                                   p.every_steps))
  return tx
