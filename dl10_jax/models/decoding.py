"""Greedy and beam-search decoding for `transformer.EncoderDecoder`, with fixed shapes under jit.

Both write into a token buffer of the final length and re-run the decoder over the whole buffer
each step (causal, so later slots change nothing): one `fori_loop` of a fixed trip count, no
dynamic shapes, one compilation per (batch, source length, max_len). For the short sequences of
algorithmic tasks recomputation costs less than the bookkeeping of a key/value cache.

Outputs are [B, max_len] in the format of a target: y_1 .. y_n, EOS, then 0 pads.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG = -1e9  # The score of an impossible continuation (finite: no inf - inf).


def greedy_decode(model: nn.Module, variables: Any, source: jax.Array, max_len: int, *,
                  bos_id: int = 1, eos_id: int = 2, pad_id: int = 0) -> jax.Array:
  """The most likely next token at every step; source [B, S] -> tokens [B, max_len]."""
  memory, valid = model.apply(variables, source, method=model.encode)
  b = source.shape[0]
  buf = jnp.full((b, max_len + 1), pad_id, jnp.int32).at[:, 0].set(bos_id)  # [B, 1 + max_len]

  def step(t, carry):
    buf, done = carry
    logits = model.apply(variables, memory, valid, buf[:, :max_len], method=model.decode)
    token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False), -1)
    token = jnp.where(done, pad_id, token).astype(jnp.int32)  # [B]
    buf = jax.lax.dynamic_update_index_in_dim(buf, token, t + 1, axis=1)
    return buf, done | (token == eos_id)

  buf, _ = jax.lax.fori_loop(0, max_len, step, (buf, jnp.zeros((b,), bool)))
  return buf[:, 1:]


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT's ((5 + |y|) / 6)^alpha (Wu et al. 2016): alpha 0 ranks by the sum of log-probs."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(model: nn.Module, variables: Any, source: jax.Array, max_len: int, *,
                beam_size: int = 4, alpha: float = 0.6, bos_id: int = 1, eos_id: int = 2,
                pad_id: int = 0) -> jax.Array:
  """Beam search ranked by log p(y) / length_penalty(|y|); source [B, S] -> tokens [B, max_len].

  A finished beam (it emitted EOS) continues with pads at no cost, so it competes with the live
  ones at its own length. With beam_size 1 this is exactly `greedy_decode`.
  """
  b, k = source.shape[0], beam_size
  memory, valid = model.apply(variables, source, method=model.encode)
  memory, valid = jnp.repeat(memory, k, axis=0), jnp.repeat(valid, k, axis=0)  # [B*K, ...]
  buf = jnp.full((b, k, max_len + 1), pad_id, jnp.int32).at[:, :, 0].set(bos_id)
  scores = jnp.full((b, k), NEG).at[:, 0].set(0.0)  # One live beam at first: no duplicates.
  lengths = jnp.zeros((b, k), jnp.int32)
  done = jnp.zeros((b, k), bool)

  def step(t, carry):
    buf, scores, lengths, done = carry
    logits = model.apply(variables, memory, valid, buf.reshape(b * k, -1)[:, :max_len],
                         method=model.decode)
    logits = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)  # [B*K, V]
    log_p = jax.nn.log_softmax(logits).reshape(b, k, -1)  # [B, K, V]
    vocab = log_p.shape[-1]
    pad_only = jnp.where(jnp.arange(vocab) == pad_id, 0.0, NEG)  # [V]
    log_p = jnp.where(done[..., None], pad_only, log_p)
    candidates = scores[..., None] + log_p  # [B, K, V]
    cand_len = jnp.broadcast_to(jnp.where(done, lengths, t + 1)[..., None], candidates.shape)
    ranked = candidates / length_penalty(cand_len, alpha)
    _, idx = jax.lax.top_k(ranked.reshape(b, k * vocab), k)  # [B, K], best first
    beam, token = idx // vocab, (idx % vocab).astype(jnp.int32)
    take = lambda x: jnp.take_along_axis(x.reshape(b, k * vocab), idx, axis=1)
    buf = jnp.take_along_axis(buf, beam[..., None], axis=1)
    buf = jax.lax.dynamic_update_index_in_dim(buf, token, t + 1, axis=2)
    done = jnp.take_along_axis(done, beam, axis=1) | (token == eos_id)
    return buf, take(candidates), take(cand_len), done

  buf, _, _, _ = jax.lax.fori_loop(0, max_len, step, (buf, scores, lengths, done))
  return buf[:, 0, 1:]  # The best-ranked beam.
