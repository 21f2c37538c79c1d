"""Decoding: sampling from language models, and greedy / beam search for encoder-decoders.

Both run as one jitted loop over fixed shapes, so a new token never recompiles.

Language models (`generate`): a model that can be sampled is an `IncrementalLM`, with
`init_cache(batch_size, max_len)` and `extend(tokens [B, t], cache, start, length) -> (logits
[B, t, V], cache)` (GPT: a key/value cache; recurrent models: their state). The prompt is padded
to a power-of-two bucket and fed once (prefill); then each step feeds one token, inside one
`jax.jit` with a `lax.fori_loop`, so a new prompt length only recompiles when it starts a new
bucket. A model with a finite context (`block_size`) that fills it re-reads the last half of the
context into a fresh cache and continues (a sliding window, at one prefill per half-window).

Encoder-decoders (`greedy_decode`, `beam_search`, for `transformer.EncoderDecoder`): both write
into a token buffer of the final length and re-run the decoder over the whole buffer each step
(causal, so later slots change nothing): one `fori_loop` of a fixed trip count, one compilation
per (batch, source length, max_len). For the short sequences of algorithmic tasks recomputation
costs less than the bookkeeping of a key/value cache. Outputs are [B, max_len] in the format of a
target: y_1 .. y_n, EOS, then 0 pads.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError


# --- Sampling from language models. ---

@runtime_checkable
class IncrementalLM(Protocol):
  """A language model that `generate` can run token by token over a fixed-shape cache."""

  def init_cache(self, batch_size: int, max_len: int) -> Any:
    """The empty cache for `batch_size` sequences of up to `max_len` tokens."""

  def extend(self, tokens: jax.Array, cache: Any, start: jax.Array,
             length: jax.Array) -> tuple[jax.Array, Any]:
    """Feeds tokens [B, t] at positions start.. (the first `length` real); (logits, cache)."""


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """[B, V] logits -> logits to sample from: tempered, then the top-k, then the top-p nucleus."""
  logits = logits / temperature
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if 0 < top_p < 1:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it < p.
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def _bucket(n: int) -> int:
  return max(8, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=('model', 'bucket', 'max_new_tokens', 'num_samples',
                                             'temperature', 'top_k', 'top_p'))
def _generate(model: nn.Module, params: Any, prompt: jax.Array, prompt_len: jax.Array,
              rng: jax.Array, *, bucket: int, max_new_tokens: int, num_samples: int,
              temperature: float, top_k: int, top_p: float) -> jax.Array:
  context = getattr(model, 'block_size', None)
  max_len = min(bucket + max_new_tokens, context) if context else bucket + max_new_tokens
  # Tokens re-read when a finite context is full (min: traced even where it cannot happen).
  keep = min(max(1, (context or max_len) // 2), bucket + max_new_tokens)
  apply = functools.partial(model.apply, {'params': params}, method=model.extend)

  history = jnp.zeros((num_samples, bucket + max_new_tokens), jnp.int32)
  history = history.at[:, :bucket].set(jnp.broadcast_to(prompt, (num_samples, bucket)))
  cache = model.init_cache(num_samples, max_len)
  logits, cache = apply(history[:, :bucket], cache, 0, prompt_len)
  last = jnp.take(logits, prompt_len - 1, axis=1)  # [B, V] after the last prompt token.

  def body(i, carry):
    history, cache, last, pos, rng = carry
    rng, key = jax.random.split(rng)
    if temperature == 0:
      token = jnp.argmax(last, axis=-1).astype(jnp.int32)
    else:
      token = jax.random.categorical(key, filter_logits(last, temperature, top_k, top_p))
      token = token.astype(jnp.int32)
    end = prompt_len + i  # history index of this token.
    history = jax.lax.dynamic_update_slice(history, token[:, None], (0, end))

    def step(_):
      logits, new_cache = apply(token[:, None], cache, pos, 1)
      return logits[:, 0], new_cache, pos + 1

    def slide(_):  # The context is full: re-read its last `keep` tokens into a fresh cache.
      window = jax.lax.dynamic_slice(history, (0, end + 1 - keep), (num_samples, keep))
      logits, new_cache = apply(window, model.init_cache(num_samples, max_len), 0, keep)
      return logits[:, -1], new_cache, jnp.asarray(keep, pos.dtype)

    if context:
      last, cache, pos = jax.lax.cond(pos >= max_len, slide, step, None)
    else:
      last, cache, pos = step(None)
    return history, cache, last, pos, rng

  history, *_ = jax.lax.fori_loop(0, max_new_tokens, body,
                                  (history, cache, last, prompt_len, rng))
  return jax.vmap(lambda h: jax.lax.dynamic_slice(h, (prompt_len,), (max_new_tokens,)))(history)


def generate(model: nn.Module, params: Any, prompt: jax.Array, *, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0) -> jax.Array:
  """int32 [num_samples, max_new_tokens] continuations of the int32 [P] `prompt` (P >= 1).

  temperature 0 decodes greedily (argmax); top_k 0 and top_p 1 disable those filters.
  """
  if not isinstance(model, IncrementalLM):
    raise ConfigError(f'{type(model).__name__} cannot generate tokens: it has no init_cache and '
                      'extend (an IncrementalLM, as gpt and recurrent_lm are)')
  p = int(prompt.shape[0])
  context = getattr(model, 'block_size', None)
  bucket = _bucket(p)
  if context:
    bucket = min(bucket, context)
    prompt = prompt[-bucket:]  # A prompt longer than the context: its last `context` tokens.
    p = min(p, bucket)
  padded = jnp.zeros((bucket,), jnp.int32).at[:p].set(prompt)
  return _generate(model, params, padded, jnp.asarray(p, jnp.int32), jax.random.PRNGKey(seed),
                   bucket=bucket, max_new_tokens=max_new_tokens, num_samples=num_samples,
                   temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))


# --- Greedy and beam-search decoding for encoder-decoders. ---

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
