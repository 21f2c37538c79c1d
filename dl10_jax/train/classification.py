"""Classification: softmax cross-entropy, accuracy; eval over the whole test split.

Loss terms a model sows (objective.sown_loss) are added; REINFORCE is rewarded by correctness.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from dl10_jax.train.objective import Batch, Metrics, with_sown_loss
from dl10_jax.train.state import TrainState
from dl10_jax.train.supervised import Supervised


class Classification(Supervised):
  """Batches are {INPUT: ..., 'label': int[B]} (+ 'mask' in eval); the dataset names INPUT.

  INPUT is `splits.input_key`: 'image' (float[B, H, W, C]) for images, 'tokens' (int[B, L], 0
  pads) for text.
  """

  @property
  def input_key(self) -> str:
    return self.splits.input_key if self.splits is not None else 'image'

  def model_inputs(self, batch: Batch) -> jax.Array:
    return batch[self.input_key]

  def loss(self, params: Any, state: TrainState, batch: Batch,
           rng: jax.Array) -> tuple[jax.Array, tuple[Metrics, Any]]:
    logits, model_state, sown = self.apply_train(params, state, self.model_inputs(batch), rng)
    smoothing = self.config.get('label_smoothing', 0.0)
    if smoothing:
      targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], logits.shape[-1]), smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
    else:
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    correct = (logits.argmax(-1) == batch['label']).astype(jnp.float32)
    metrics = {'train_loss': loss, 'train_accuracy': correct.mean()}
    # E.g. hard attention's REINFORCE terms, rewarded 1 for a right answer (Mnih et al. 2014).
    loss, metrics = with_sown_loss(loss, metrics, sown, correct)
    return loss, (metrics, model_state)

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    variables = {'params': state.params, **state.model_state}
    logits = state.apply_fn(variables, self.model_inputs(batch), train=False)
    mask = batch['mask']
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    return {'loss': (losses * mask).sum(),
            'correct': ((logits.argmax(-1) == batch['label']) * mask).sum(),
            'count': mask.sum()}

  def summarize_eval(self, sums: dict[str, float]) -> dict[str, float]:
    return {'eval_loss': sums['loss'] / sums['count'],
            'eval_accuracy': sums['correct'] / sums['count']}
