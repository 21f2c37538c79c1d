"""Language modelling: next-token cross-entropy; eval over the whole validation split.

Batches are {'tokens': int[B, T + 1], 'weights': float[B, T]}: the model reads tokens[:, :-1] and
predicts tokens[:, 1:]; `weights` is 0 on padded targets (the end of the eval split). Eval reports
`eval_loss` in nats per token, and per character (`eval_loss_per_char`, `eval_bits_per_char`)
through the eval split's characters per token, so runs with different tokenizers compare. Loss
terms a model sows (objective.sown_loss) are added; REINFORCE is rewarded by each sequence's
accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dl10_jax.train.objective import Batch, Metrics, with_sown_loss
from dl10_jax.train.state import TrainState
from dl10_jax.train.supervised import Supervised


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy per position, float32: [B, T, V], [B, T] -> [B, T]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def sequence_accuracy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """The weighted fraction of right next tokens of each sequence, [B]: the reward of REINFORCE
  terms a model sows (objective.sown_loss)."""
  correct = ((logits.argmax(-1) == targets) * weights).sum(1)
  return correct / jnp.maximum(weights.sum(1), 1.0)


class LanguageModel(Supervised):

  samples = 'text'

  def model_inputs(self, batch: Batch) -> jax.Array:
    return batch['tokens'][:, :-1]

  def loss(self, params: Any, state: TrainState, batch: Batch,
           rng: jax.Array) -> tuple[jax.Array, tuple[Metrics, Any]]:
    logits, model_state, sown = self.apply_train(params, state, self.model_inputs(batch), rng)
    targets, weights = batch['tokens'][:, 1:], batch['weights']
    loss = (token_losses(logits, targets) * weights).sum() / weights.sum()
    loss, metrics = with_sown_loss(loss, {'train_loss': loss}, sown,
                                   sequence_accuracy(logits, targets, weights))
    return loss, (metrics, model_state)

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    variables = {'params': state.params, **state.model_state}
    logits = state.apply_fn(variables, self.model_inputs(batch), train=False)
    weights = batch['weights'] * batch['mask'][:, None]  # Padded targets, padded rows.
    return {'loss': (token_losses(logits, batch['tokens'][:, 1:]) * weights).sum(),
            'count': weights.sum()}

  def tokens_per_step(self) -> int:
    return self.config.batch_size * self.config.dataset.block_size

  def flops_per_step(self, params: Any) -> float | None:
    if not hasattr(self.model, 'flops_per_token'):
      return None
    return self.model.flops_per_token(params, self.config.dataset.block_size) * \
        self.tokens_per_step()

  def throughput(self, steps_per_sec: float) -> dict[str, float]:
    return {'tokens_per_sec': steps_per_sec * self.tokens_per_step()}

  def summarize_eval(self, sums: dict[str, float]) -> dict[str, float]:
    per_token = sums['loss'] / sums['count']
    per_char = per_token / self.splits.chars_per_token
    return {'eval_loss': per_token, 'eval_loss_per_char': per_char,
            'eval_bits_per_char': per_char / math.log(2)}
