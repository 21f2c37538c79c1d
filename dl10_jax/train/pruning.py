"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune") as an optax transform.

The masks live in the optimizer state, so they are sharded, checkpointed and restored with it and a
resumed run prunes exactly as an uninterrupted one. Chained last (after the inner optimizer), the
transform turns the update of every pruned weight into `-param`: param + update is exactly 0 after
every step, whatever the inner optimizer's moments hold.

Prunable: every parameter with ndim >= 2 (conv and dense kernels, and embedding tables too); biases
and norm scales are never pruned. Each kernel is pruned on its own to the scheduled sparsity, so at
the end step every kernel holds exactly round(sparsity * size) zeros.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dl10_jax.errors import ConfigError


class PruningState(NamedTuple):
  count: jax.Array  # int32: updates applied so far.
  masks: Any  # Like params, bool (True: kept); a scalar True for a parameter never pruned.


def prunable(param: Any) -> bool:
  """Kernels and embeddings are pruned; vectors (biases, norm scales) are too small to matter."""
  return jnp.ndim(param) >= 2


def sparsity_schedule(target: float, begin_step: int, end_step: int) -> optax.Schedule:
  """s_t = target * (1 - (1 - (t - begin) / (end - begin))^3): 0 up to begin, target from end.

  Prunes fast while many weights are redundant and slowly near the target, where each one counts.
  """
  def schedule(step: jax.Array) -> jax.Array:
    progress = jnp.clip((step - begin_step) / (end_step - begin_step), 0.0, 1.0)
    return target * (1.0 - (1.0 - progress) ** 3)
  return schedule


def _magnitude_mask(weight: jax.Array, mask: jax.Array, num_pruned: jax.Array) -> jax.Array:
  """Keeps all but the `num_pruned` smallest |weight|, exactly that many.

  Already pruned weights rank first (they stay pruned); ties are broken by position, as a stable
  sort orders them, so equal magnitudes never make the count inexact.
  """
  score = jnp.where(mask, jnp.abs(weight), -1.0).ravel()
  order = jnp.argsort(score, stable=True)
  keep = jnp.arange(score.size) >= num_pruned  # Rank r is kept iff r >= num_pruned.
  return jnp.zeros(score.size, bool).at[order].set(keep).reshape(weight.shape)


def magnitude_pruning(sparsity: float, begin_step: int, end_step: int,
                      every_steps: int) -> optax.GradientTransformation:
  """Prunes each kernel to `sparsity` on the cubic schedule; masks change every `every_steps`.

  Step t is the step the params reach with an update (the trainer's `state.step` after it): masks
  are recomputed at t = begin + k * every_steps up to end_step, and at end_step itself, from the
  magnitudes of the updated weights. Jit-safe: the step only enters through `lax.cond`.
  """
  if not 0 <= sparsity < 1:
    raise ConfigError(f'pruning.sparsity={sparsity!r} must be in [0, 1)')
  if not 0 <= begin_step < end_step:
    raise ConfigError(f'pruning.begin_step={begin_step} must be >= 0 and < '
                      f'pruning.end_step={end_step}')
  if every_steps <= 0:
    raise ConfigError(f'pruning.every_steps={every_steps} must be > 0')
  schedule = sparsity_schedule(sparsity, begin_step, end_step)

  def init_fn(params: Any) -> PruningState:
    masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p) if prunable(p) else (), bool), params)
    return PruningState(count=jnp.zeros((), jnp.int32), masks=masks)

  def update_fn(updates: Any, state: PruningState, params: Any = None) -> tuple[Any, PruningState]:
    if params is None:
      raise ValueError('magnitude_pruning needs the params (pass them to update)')
    step = state.count + 1
    due = (step >= begin_step) & (step <= end_step) & (
        ((step - begin_step) % every_steps == 0) | (step == end_step))

    def new_mask(mask: jax.Array, param: jax.Array, update: jax.Array) -> jax.Array:
      if mask.ndim == 0:
        return mask
      final = round(sparsity * param.size)  # Exact, in Python: the count at and after end_step.
      num_pruned = jnp.minimum(jnp.round(schedule(step) * param.size).astype(jnp.int32), final)
      num_pruned = jnp.where(step >= end_step, final, num_pruned)
      num_pruned = jnp.maximum(num_pruned, jnp.sum(~mask))  # Never revive a pruned weight.
      return _magnitude_mask(param + update, mask, num_pruned)

    masks = jax.lax.cond(due, lambda: jax.tree.map(new_mask, state.masks, params, updates),
                         lambda: state.masks)
    updates = jax.tree.map(
        lambda m, p, u: u if m.ndim == 0 else jnp.where(m, u, (-p).astype(u.dtype)),
        masks, params, updates)
    return updates, PruningState(count=optax.safe_increment(state.count), masks=masks)

  return optax.GradientTransformation(init_fn, update_fn)


def sparsity(params: Any) -> float:
  """The fraction of exact zeros over the prunable parameters: what pruning achieved."""
  kernels = [p for p in jax.tree.leaves(params) if prunable(p)]
  total = sum(p.size for p in kernels)
  zeros = sum((jnp.sum(p == 0) for p in kernels), jnp.zeros((), jnp.int32))
  return int(zeros) / total if total else 0.0  # One host sync, at eval points only.
