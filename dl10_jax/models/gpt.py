"""GPT (seed algorithm 6): a decoder-only Transformer language model (Radford et al. 2018/2019).

Token + learned position embeddings (or rotary position embeddings instead), pre-LN blocks of
causal multi-head self-attention and a GELU MLP, a final LayerNorm, and the output projection tied
to the token embedding. GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by
1/sqrt(2 n_layer). Dropout on embeddings and residual branches (not on attention probabilities, so
that fused attention kernels apply). Attention goes through `attention.dot_product_attention`,
whose `attention_impl` switch never changes the model.

`extend` runs the model incrementally over a fixed-shape key/value cache (`init_cache`), for
sampling (dl10_jax/sampling.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.config_recipes import GPT_SIZES as SIZES  # Named sizes, where configs read them.
from dl10_jax.errors import ConfigError
from dl10_jax.models import attention

POSITIONS = ('learned', 'rotary')
Cache = list[dict[str, jax.Array]]  # Per layer {'k', 'v'}: [B, max_len, H, D].


def rotary(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021) of x [B, T, H, D] at positions [T]."""
  half = x.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [T, D/2]
  cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


class CausalSelfAttention(nn.Module):
  num_heads: int
  residual_init: Any
  positions: str = 'learned'
  dropout_rate: float = 0.0
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, cache: dict[str, jax.Array] | None = None,
               start: jax.Array | int = 0):
    b, t, width = x.shape
    head_dim = width // self.num_heads
    # One fused projection with kernel [W, 3, H, D]: heads are an axis of their own, so tensor
    # parallelism splits them (train/sharding.py) and each device holds whole heads of q, k, v.
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype,
                          kernel_init=nn.initializers.normal(0.02), name='qkv')(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, 3, H, D] -> 3 x [B, T, H, D]
    if self.positions == 'rotary':
      pos = start + jnp.arange(t)
      q, k = rotary(q, pos), rotary(k, pos)
    if cache is None:
      y = attention.dot_product_attention(q, k, v, causal=True, impl=self.attention_impl)
    else:  # Write this chunk at `start`, attend to everything written up to each query.
      cache = {'k': jax.lax.dynamic_update_slice(cache['k'], k.astype(cache['k'].dtype),
                                                 (0, start, 0, 0)),
               'v': jax.lax.dynamic_update_slice(cache['v'], v.astype(cache['v'].dtype),
                                                 (0, start, 0, 0))}
      mask = attention.make_mask(t, cache['k'].shape[1], causal=True, q_offset=start)
      y = attention.dot_product_attention(q, cache['k'].astype(q.dtype),
                                          cache['v'].astype(q.dtype), mask=mask,
                                          impl=self.attention_impl)
    y = nn.Dense(width, dtype=self.dtype, kernel_init=self.residual_init,
                 name='proj')(y.reshape(b, t, width))
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y), cache


class MLP(nn.Module):
  residual_init: Any
  ratio: int = 4
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    width = x.shape[-1]
    h = nn.Dense(self.ratio * width, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02),
                 name='fc')(x)
    h = nn.gelu(h, approximate=True)  # GPT-2's tanh approximation.
    h = nn.Dense(width, dtype=self.dtype, kernel_init=self.residual_init, name='proj')(h)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(h)


class Block(nn.Module):
  """x + attn(LN(x)), then x + mlp(LN(x))."""
  num_heads: int
  num_layers: int
  mlp_ratio: int = 4
  positions: str = 'learned'
  dropout_rate: float = 0.0
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, cache=None, start=0):
    residual_init = nn.initializers.normal(0.02 / (2 * self.num_layers) ** 0.5)
    y, cache = CausalSelfAttention(self.num_heads, residual_init, self.positions,
                                   self.dropout_rate, self.attention_impl, self.dtype,
                                   name='attn')(nn.LayerNorm(dtype=self.dtype, name='ln1')(x),
                                                train, cache, start)
    x = x + y
    x = x + MLP(residual_init, self.mlp_ratio, self.dropout_rate, self.dtype, name='mlp')(
        nn.LayerNorm(dtype=self.dtype, name='ln2')(x), train)
    return x, cache


class GPT(nn.Module):
  """Token ids [B, T] -> next-token logits [B, T, vocab] (float32)."""
  vocab_size: int
  block_size: int = 256  # The longest context (learned position table size).
  num_layers: int = 6
  width: int = 384
  num_heads: int = 6
  mlp_ratio: int = 4
  positions: str = 'learned'
  dropout_rate: float = 0.0
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32

  def setup(self):
    if self.positions not in POSITIONS:
      raise ConfigError(f'model.positions={self.positions!r} is not supported; allowed: '
                        f'{", ".join(POSITIONS)}')
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise ConfigError(f'model.width={self.width} must be a multiple of model.num_heads='
                        f'{self.num_heads} with an even head dimension')
    init = nn.initializers.normal(0.02)
    self.wte = nn.Embed(self.vocab_size, self.width, embedding_init=init, dtype=self.dtype)
    if self.positions == 'learned':
      self.wpe = nn.Embed(self.block_size, self.width, embedding_init=init, dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout_rate)
    self.blocks = [Block(self.num_heads, self.num_layers, self.mlp_ratio, self.positions,
                         self.dropout_rate, self.attention_impl, self.dtype, name=f'block{i}')
                   for i in range(self.num_layers)]
    self.ln_f = nn.LayerNorm(dtype=self.dtype)

  def _embed(self, tokens: jax.Array, start: jax.Array | int, train: bool) -> jax.Array:
    x = self.wte(tokens)
    if self.positions == 'learned':
      x = x + self.wpe(start + jnp.arange(tokens.shape[1]))[None]
    return self.drop(x, deterministic=not train)

  def _logits(self, x: jax.Array) -> jax.Array:
    return self.wte.attend(self.ln_f(x)).astype(jnp.float32)  # Tied output projection.

  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    if tokens.shape[1] > self.block_size:
      raise ConfigError(f'a sequence of {tokens.shape[1]} tokens is longer than model.block_size='
                        f'{self.block_size}')
    x = self._embed(tokens, 0, train)
    for block in self.blocks:
      x, _ = block(x, train)
    return self._logits(x)

  def flops_per_token(self, params: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matmul parameter + attention over seq_len (as nanoGPT)."""
    matmul_params = sum(x.size for k, v in params.items() if k != 'wpe' for x in jax.tree.leaves(v))
    return 6.0 * matmul_params + 12.0 * self.num_layers * self.width * seq_len

  # --- Incremental decoding with a key/value cache (dl10_jax/sampling.py). ---

  def init_cache(self, batch_size: int, max_len: int) -> Cache:
    shape = (batch_size, max_len, self.num_heads, self.width // self.num_heads)
    return [{'k': jnp.zeros(shape, self.dtype), 'v': jnp.zeros(shape, self.dtype)}
            for _ in range(self.num_layers)]

  def extend(self, tokens: jax.Array, cache: Cache, start: jax.Array,
             length: jax.Array) -> tuple[jax.Array, Cache]:
    """Feeds tokens [B, t] at positions start..start+t-1; returns logits [B, t, V] and the cache.

    Tokens past `length` are padding: their keys are written but every later step overwrites them
    before any query can see them (a query at position p sees keys <= p, all real by then).
    """
    del length
    x = self._embed(tokens, start, False)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache):
      x, layer_cache = block(x, False, layer_cache, start)
      new_cache.append(layer_cache)
    return self._logits(x), new_cache
