"""Sampling from language models: one jitted loop over a fixed-shape cache.

A model that can be sampled defines `init_cache(batch_size, max_len)` and
`extend(tokens [B, t], cache, start, length) -> (logits [B, t, V], cache)` (GPT: a key/value
cache; recurrent models: their state). The prompt is padded to a power-of-two bucket and fed once
(prefill); then each step feeds one token. Everything runs inside one `jax.jit` with a
`lax.fori_loop`, so a new token never recompiles and a new prompt length only does when it starts
a new bucket. A model with a finite context (`block_size`) that fills it re-reads the last half of
the context into a fresh cache and continues (a sliding window, at one prefill per half-window).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


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
