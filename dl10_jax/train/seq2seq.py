"""Sequence to sequence: token cross-entropy with teacher forcing; exact match of decoded outputs.

Batches are {'source': int[B, S], 'target': int[B, T]} (0 pads; a target ends with EOS) and, in
eval, 'group' (which of `splits.eval_groups`, e.g. a length) and 'mask'. The decoder reads
[BOS, target[:-1]] and predicts the target. Eval decodes every source (greedy, or beam search with
`config.beam_size` > 1 and `config.length_penalty`) and reports:

  eval_loss, eval_token_accuracy (teacher-forced, per target token), eval_exact_match (the
  decoded sequence equals the target up to and including its EOS, `exact_match`): of the first
  group;
  the same with a suffix `_<group>` for each further group (e.g. eval_exact_match_len32).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dl10_jax.data import algorithmic
from dl10_jax.models import decoding
from dl10_jax.train.language_model import sequence_accuracy, token_losses
from dl10_jax.train.objective import Batch, Metrics, with_sown_loss
from dl10_jax.train.state import TrainState
from dl10_jax.train.supervised import Supervised


def decoder_input(target: jax.Array, bos_id: int = algorithmic.BOS) -> jax.Array:
  """[B, T] targets -> [B, T] decoder inputs: BOS, then the target shifted right."""
  return jnp.concatenate([jnp.full_like(target[:, :1], bos_id), target[:, :-1]], axis=1)


def exact_match(decoded: jax.Array, target: jax.Array, eos_id: int = algorithmic.EOS) -> jax.Array:
  """[B] bool: each decoded sequence [B, T] equals its target up to and including the target's
  first EOS; what follows that EOS counts for nothing. An early, late or missing EOS is wrong."""
  is_eos = (target == eos_id).astype(jnp.int32)
  after_eos = jnp.cumsum(is_eos, axis=1) - is_eos > 0
  return ((decoded == target) | after_eos).all(axis=1)


class Seq2Seq(Supervised):

  @property
  def groups(self) -> tuple[str, ...]:
    return tuple(getattr(self.splits, 'eval_groups', ())) or ('all',)

  def model_inputs(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
    return batch['source'], decoder_input(batch['target'])

  def loss(self, params: Any, state: TrainState, batch: Batch,
           rng: jax.Array) -> tuple[jax.Array, tuple[Metrics, Any]]:
    logits, model_state, sown = self.apply_train(params, state, self.model_inputs(batch), rng)
    target = batch['target']
    weights = (target != 0).astype(jnp.float32)
    loss = (token_losses(logits, target) * weights).sum() / weights.sum()
    accuracy = ((logits.argmax(-1) == target) * weights).sum() / weights.sum()
    loss, metrics = with_sown_loss(loss, {'train_loss': loss, 'train_token_accuracy': accuracy},
                                   sown, sequence_accuracy(logits, target, weights))
    return loss, (metrics, model_state)

  def decode(self, variables: Any, source: jax.Array, max_len: int) -> jax.Array:
    """Source [B, S] -> decoded tokens [B, max_len], in the target's format."""
    beam_size = self.config.get('beam_size', 1)
    if beam_size > 1:
      return decoding.beam_search(self.model, variables, source, max_len, beam_size=beam_size,
                                  alpha=self.config.get('length_penalty', 0.6),
                                  bos_id=algorithmic.BOS, eos_id=algorithmic.EOS)
    return decoding.greedy_decode(self.model, variables, source, max_len,
                                  bos_id=algorithmic.BOS, eos_id=algorithmic.EOS)

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    variables = {'params': state.params, **state.model_state}
    source, target = batch['source'], batch['target']
    logits = state.apply_fn(variables, (source, decoder_input(target)), train=False)
    weights = (target != 0).astype(jnp.float32)
    token_loss = (token_losses(logits, target) * weights).sum(1)  # [B]
    token_correct = ((logits.argmax(-1) == target) * weights).sum(1)
    exact = exact_match(self.decode(variables, source, target.shape[1]), target)
    group = batch.get('group', jnp.zeros(source.shape[0], jnp.int32))
    sums = {}
    for g in range(len(self.groups)):  # Scalars per group: the loop adds sums up by name.
      rows = (group == g) * batch['mask']  # [B]
      sums.update({f'loss_{g}': (token_loss * rows).sum(),
                   f'correct_{g}': (token_correct * rows).sum(),
                   f'tokens_{g}': (weights.sum(1) * rows).sum(),
                   f'exact_{g}': (exact * rows).sum(), f'count_{g}': rows.sum()})
    return sums

  def summarize_eval(self, sums: dict[str, float]) -> dict[str, float]:
    out = {}
    for g, name in enumerate(self.groups):
      suffix = f'_{name}' if g else ''
      tokens, count = max(sums[f'tokens_{g}'], 1.0), max(sums[f'count_{g}'], 1.0)
      out.update({f'eval_loss{suffix}': sums[f'loss_{g}'] / tokens,
                  f'eval_token_accuracy{suffix}': sums[f'correct_{g}'] / tokens,
                  f'eval_exact_match{suffix}': sums[f'exact_{g}'] / count})
    return out
