"""The train state: everything a step reads and writes, as one pytree the loop can shard and save."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: the number of updates applied so far.
  params: Any
  opt_state: optax.OptState
  model_state: Any  # Mutable collections such as {'batch_stats': ...}; {} when a model has none.
  rng: jax.Array  # uint32[2] base key; step t uses fold_in(rng, t), so resuming needs no RNG replay.
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def step_rng(self) -> jax.Array:
    return jax.random.fold_in(self.rng, self.step)

  def apply_gradients(self, grads: Any, model_state: Any) -> 'TrainState':
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state, model_state=model_state)


@flax.struct.dataclass
class EMAState(TrainState):
  """TrainState + an exponential moving average of (part of) `params`: what a generative model
  samples and evaluates with (smoother than the weights of the last step)."""
  ema_params: Any = None


def ema_update(ema: Any, params: Any, decay: float, step: jax.Array) -> Any:
  """ema <- d * ema + (1 - d) * params, d = min(decay, (1 + step) / (10 + step)): the ramp lets
  the average forget the random initialisation within the first few hundred steps."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
