"""Dynamic loss scaling for float16 compute, as an optax wrapper around the optimizer.

float16 gradients of a float32 loss underflow to zero below ~6e-8; scaling the loss by S (2^15 to
start) lifts them into range, and the optimizer sees grads / S. When a step's gradients overflow
(inf/NaN), `optax.apply_if_finite` skips the update and keeps the optimizer's moments, and S
halves; after `period` finite steps in a row S doubles (the schedule of jmp.DynamicLossScale, whose
pytree cannot hold the shardings and shapes the trainer maps over a state). The scale lives in the
optimizer state, so it is checkpointed with it, and a float32 or bfloat16 run's state is unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

INITIAL_SCALE = 2.0**15
PERIOD = 2000
# Steps skipped in a row before apply_if_finite gives up skipping: never, in effect; a run whose
# scale bottoms out at 1 and still overflows shows it in its NaN loss.
_MAX_SKIPS = 2**30


class LossScaleState(NamedTuple):
  loss_scale: jax.Array  # float32 scalar: the factor of the next step's loss.
  finite_steps: jax.Array  # int32 scalar: finite steps since the scale last changed.
  inner_state: optax.ApplyIfFiniteState


def dynamic_loss_scaling(inner: optax.GradientTransformation,
                         initial_scale: float = INITIAL_SCALE,
                         period: int = PERIOD) -> optax.GradientTransformation:
  """`inner` fed with gradients of a loss scaled by the state's scale: unscales them, applies
  `inner` only when they are all finite, and adapts the scale."""
  guarded = optax.apply_if_finite(inner, _MAX_SKIPS)

  def init_fn(params: Any) -> LossScaleState:
    return LossScaleState(jnp.asarray(initial_scale, jnp.float32), jnp.zeros((), jnp.int32),
                          guarded.init(params))

  def update_fn(grads: Any, state: LossScaleState,
                params: Any = None) -> tuple[Any, LossScaleState]:
    grads = jax.tree.map(lambda g: g / state.loss_scale.astype(g.dtype), grads)
    updates, inner_state = guarded.update(grads, state.inner_state, params)
    finite = inner_state.last_finite
    grown = state.finite_steps + 1 == period
    doubled = jnp.where(jnp.isfinite(2 * state.loss_scale), 2 * state.loss_scale, state.loss_scale)
    scale = jnp.where(finite, jnp.where(grown, doubled, state.loss_scale),
                      jnp.maximum(1.0, state.loss_scale / 2))
    finite_steps = jnp.where(finite & ~grown, state.finite_steps + 1, 0)
    return updates, LossScaleState(scale, finite_steps, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def metrics(opt_state: Any) -> dict[str, jax.Array]:
  """{'train_loss_scale': this step's scale} under loss scaling, else nothing."""
  if isinstance(opt_state, LossScaleState):
    return {'train_loss_scale': opt_state.loss_scale}
  return {}
