"""GPT: a decoder-only Transformer language model (Radford et al. 2018/2019).

Token + learned position embeddings (or rotary position embeddings instead), pre-LN blocks of
causal multi-head self-attention and a GELU MLP, a final LayerNorm, and the output projection tied
to the token embedding. GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by
1/sqrt(2 n_layer). Dropout on embeddings and residual branches (not on attention probabilities, so
that fused attention kernels apply). Attention is `attention.MultiHeadAttention` with GPT-2's
fused projections (`CausalSelfAttention`); its `attention_impl` switch never changes the model.
The MLP, rotary embeddings and the residual init are `layers`', shared with the Transformer.
`remat` recomputes each block's activations in the backward pass (`layers.remat`), to save memory.

`extend` runs the model incrementally over a fixed-shape key/value cache (`init_cache`), for
sampling (models/decoding.generate).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.models import attention, layers

POSITIONS = ('learned', 'rotary')
Cache = list[attention.Cache]  # Per layer {'k', 'v'}: [B, max_len, H, D].


class CausalSelfAttention(attention.MultiHeadAttention):
  """GPT-2's layout of the attention layer: one fused `qkv` projection and a flat `proj`.

  The qkv kernel [W, 3, H, D] keeps heads an axis of their own, so tensor parallelism splits them
  (train/sharding.py) and each device holds whole heads of q, k and v.
  """

  def project(self, inputs_q: jax.Array, inputs_kv: jax.Array, kv_heads: int,
              head_dim: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    del inputs_kv, kv_heads  # Self-attention, as many key heads as query heads.
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype,
                          kernel_init=nn.initializers.normal(0.02), name='qkv')(inputs_q)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, 3, H, D] -> 3 x [B, T, H, D]

  def project_out(self, out: jax.Array, features: int) -> jax.Array:
    b, t = out.shape[:2]
    return nn.Dense(features, dtype=self.dtype, kernel_init=self.out_init,
                    name='proj')(out.reshape(b, t, -1))


class Block(nn.Module):
  """x + attn(LN(x)), then x + mlp(LN(x))."""
  num_heads: int
  num_layers: int
  mlp_ratio: int = 4
  positions: str = 'learned'
  dropout_rate: float = 0.0
  attention_impl: str = 'xla'
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, cache=None, start=0):
    init = layers.residual_init(self.num_layers)
    attn = CausalSelfAttention(
        num_heads=self.num_heads, attention_impl=self.attention_impl,
        dropout_rate=self.dropout_rate, out_init=init, dtype=self.dtype, name='attn',
        rotate=layers.rotary if self.positions == 'rotary' else None)
    h = nn.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype, name='ln1')(x)
    if cache is None:
      x = x + attn(h, causal=True, train=train)
    else:
      y, cache = attn(h, train=train, cache=cache, start=start)
      x = x + y
    x = x + layers.MLP(init, self.mlp_ratio, self.dropout_rate, self.dtype, name='mlp')(
        nn.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype, name='ln2')(x), train)
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
  remat: str = 'none'  # none | full | dots | dots_no_batch (layers.REMAT_POLICIES)
  # flax's default; GPT-2 (and its Hugging Face checkpoints, models/hf_gpt2.py) uses 1e-5.
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32

  def setup(self):
    check_choice('model.positions', self.positions, POSITIONS)
    attention.check_heads(self.width, self.num_heads)
    init = nn.initializers.normal(0.02)
    self.wte = nn.Embed(self.vocab_size, self.width, embedding_init=init, dtype=self.dtype)
    if self.positions == 'learned':
      self.wpe = nn.Embed(self.block_size, self.width, embedding_init=init, dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout_rate)
    block = layers.remat(Block, self.remat, static_argnums=(2,))  # train
    self.blocks = [block(self.num_heads, self.num_layers, self.mlp_ratio, self.positions,
                         self.dropout_rate, self.attention_impl, self.layer_norm_epsilon,
                         self.dtype, name=f'block{i}')
                   for i in range(self.num_layers)]
    self.ln_f = nn.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype)

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

  # --- Incremental decoding with a key/value cache (models/decoding.generate). ---

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
