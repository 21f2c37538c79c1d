"""The supervised base: one model, one loss, one shared update (classification, language
modelling, seq2seq, diffusion).

An objective writes `model_inputs`, `loss`, `eval_step` and `summarize_eval`; its `loss` calls the
model through `apply_train`, so that what the model sows (objective.sown_loss) and a schedule it
follows (`uses_step`) work the same in every one of them. The update here averages the gradient
over micro-batches of `config.microbatch_size` when set, and with dtype=float16 scales the loss
dynamically (train/loss_scale.py).
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dl10_jax.train import loss_scale
from dl10_jax.train.objective import SOWN, Batch, Metrics, Objective
from dl10_jax.train.state import TrainState


class Supervised(Objective):
  """Base of the objectives with a single loss, minimised by the optimizer of `optim.py`."""

  @abc.abstractmethod
  def model_inputs(self, batch: Batch) -> Any:
    """The batch field(s) the model is called on."""

  def init_args(self, batch: Batch) -> tuple[Any, ...]:
    return (self.model_inputs(batch),)

  def make_optimizer(self) -> optax.GradientTransformation:
    """The config's optimizer; under float16 wrapped in dynamic loss scaling, whose scale then
    lives in the optimizer state."""
    tx = super().make_optimizer()
    return loss_scale.dynamic_loss_scaling(tx) if self.config.dtype == 'float16' else tx

  def apply_train(self, params: Any, state: TrainState, inputs: Any, rng: jax.Array,
                  *args: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The model in training mode on (inputs, *args): (outputs, updated model_state, what it
    sowed for its loss).

    rngs: 'dropout', and 'sample' for stochastic layers (hard attention). A model with
    `uses_step = True` (a Gumbel temperature schedule) is also passed `step=`.
    """
    variables = {'params': params, **state.model_state}
    kwargs = {'step': state.step} if getattr(self.model, 'uses_step', False) else {}
    out, mutated = state.apply_fn(variables, inputs, *args, train=True,
                                  rngs={'dropout': rng, 'sample': jax.random.fold_in(rng, 1)},
                                  mutable=list(state.model_state) + list(SOWN), **kwargs)
    mutated = dict(mutated)
    sown = {k: v for k in SOWN if (v := mutated.pop(k, None))}
    return out, mutated, sown

  @abc.abstractmethod
  def loss(self, params: Any, state: TrainState, batch: Batch,
           rng: jax.Array) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """Returns (scalar loss, (metrics, updated model_state)) for a training batch."""

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One update from the mean gradient of the batch, accumulated over micro-batches if set.

    Under loss scaling the gradients stay scaled until the optimizer (loss_scale.py) unscales
    them; the metrics are the unscaled ones, plus `train_loss_scale`."""
    grad_fn = jax.value_and_grad(self.loss, has_aux=True)
    if isinstance(state.opt_state, loss_scale.LossScaleState):
      scale = state.opt_state.loss_scale
      grad_fn = jax.value_and_grad(lambda *args: _scaled(scale, *self.loss(*args)), has_aux=True)
    rng = state.step_rng()
    scale_metric = loss_scale.metrics(state.opt_state)
    chunks = self._microbatches(batch)
    if chunks is None:
      (_, (metrics, model_state)), grads = grad_fn(state.params, state, batch, rng)
      return state.apply_gradients(grads, model_state), {**metrics, **scale_metric}

    # Equal chunks make the mean of the chunk means the batch mean: the same update.
    n = jax.tree.leaves(chunks)[0].shape[0]

    def accumulate(carry, k_and_chunk):
      grads, metrics, model_state = carry
      k, chunk = k_and_chunk
      (_, (m, model_state)), g = grad_fn(state.params, state.replace(model_state=model_state),
                                         chunk, jax.random.fold_in(rng, k))
      add = lambda total, x: total + x / n
      return (jax.tree.map(add, grads, g), jax.tree.map(add, metrics, m), model_state), None

    shapes = jax.eval_shape(grad_fn, state.params, state, jax.tree.map(lambda x: x[0], chunks), rng)
    (_, (metric_shapes, _)), grad_shapes = shapes
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
    (grads, metrics, model_state), _ = jax.lax.scan(
        accumulate, (zeros(grad_shapes), zeros(metric_shapes), state.model_state),
        (jnp.arange(n), chunks))
    return state.apply_gradients(grads, model_state), {**metrics, **scale_metric}


def _scaled(scale: jax.Array, loss: jax.Array, aux: Any) -> tuple[jax.Array, Any]:
  return loss * scale, aux
