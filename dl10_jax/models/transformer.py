"""The Transformer (Vaswani et al. 2017) with pre-LN blocks (Xiong et al. 2020).

Encoder block: x + Drop(MHA(LN(x))), then x + MLP(LN(x)); a decoder block adds cross-attention to
the encoder output between causal self-attention and the MLP. Attention is
`attention.MultiHeadAttention` (so `attention_impl` and additive scores work unchanged), the MLP is
GPT-2's (`layers.MLP`). Positions: `sinusoidal` (fixed, added), `learned` (a table of `max_len`,
added) or `rotary` (`layers.rotary` on the queries and keys of self-attention; relative, nothing
added). `remat` recomputes each block's activations in the backward pass (`layers.remat`).

Models: `TransformerClassifier` (token ids with 0 pads, or images read as rows -> CLS token or
masked mean -> logits) and `EncoderDecoder` (teacher-forced logits; `encode` / `decode` for the jitted
fixed-shape greedy and beam-search decoders of models/decoding.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.models import attention, layers

POSITIONS = ('sinusoidal', 'learned', 'rotary')
POOLINGS = ('cls', 'mean')


def sinusoidal(positions: jax.Array, width: int, base: float = 10_000.0) -> jax.Array:
  """Fixed position encodings [T, width]: sin of the first half of frequencies, cos of the rest."""
  half = width // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [T, width/2]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Positions(nn.Module):
  """Adds the position encoding of positions 0..T-1 to x [B, T, W] (nothing for rotary)."""
  positions: str = 'sinusoidal'
  max_len: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_choice('model.positions', self.positions, POSITIONS)
    t, width = x.shape[1], x.shape[2]
    if t > self.max_len:
      raise ConfigError(f'a sequence of {t} positions is longer than model.max_len={self.max_len}')
    if self.positions == 'sinusoidal':
      return x + sinusoidal(jnp.arange(t), width)[None].astype(x.dtype)
    if self.positions == 'learned':
      table = nn.Embed(self.max_len, width, embedding_init=nn.initializers.normal(0.02),
                       dtype=self.dtype, name='table')
      return x + table(jnp.arange(t))[None]
    return x


class Block(nn.Module):
  """A pre-LN block: self-attention, cross-attention to `memory` if given, MLP; each residual."""
  num_heads: int
  num_layers: int  # Of the stack: scales the residual projections' init (as GPT-2).
  mlp_ratio: int = 4
  positions: str = 'sinusoidal'
  dropout_rate: float = 0.0
  score: str = 'dot'
  attention_impl: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, train: bool, causal: bool = False,
               memory: jax.Array | None = None, memory_mask: jax.Array | None = None):
    residual_init = layers.residual_init(self.num_layers)
    mha = functools.partial(attention.MultiHeadAttention, num_heads=self.num_heads,
                            score=self.score, attention_impl=self.attention_impl,
                            dropout_rate=self.dropout_rate, out_init=residual_init,
                            dtype=self.dtype)
    rotate = layers.rotary if self.positions == 'rotary' else None
    ln = lambda name: nn.LayerNorm(dtype=self.dtype, name=name)
    x = x + mha(rotate=rotate, name='self_attn')(ln('ln1')(x), mask=mask, causal=causal,
                                                 train=train)
    if memory is not None:  # Queries from the decoder, keys and values from the encoder.
      x = x + mha(name='cross_attn')(ln('ln_cross')(x), memory, mask=memory_mask, train=train)
    return x + layers.MLP(residual_init, self.mlp_ratio, self.dropout_rate, self.dtype,
                          name='mlp')(ln('ln2')(x), train)


def _block(model: 'TransformerClassifier | EncoderDecoder') -> Callable[..., Block]:
  """A block with the fields of `model` (a classifier or an encoder-decoder), under its remat
  policy: train and causal steer the call as Python values, so they are static, passed by
  position."""
  block = layers.remat(Block, model.remat, static_argnums=(3, 4))
  return functools.partial(block, model.num_heads, model.num_layers, model.mlp_ratio,
                           model.positions, model.dropout_rate, model.score,
                           model.attention_impl, model.dtype)


class TransformerClassifier(nn.Module):
  """A Transformer encoder classifier: ids [B, L] (0 pads) or images [B, H, W, C] -> logits.

  Images are read as H steps of W*C features (as models/recurrent.RecurrentClassifier reads rows).
  pooling: `cls` reads a learned token prepended at position 0; `mean` the masked mean over time.
  """
  num_classes: int
  vocab_size: int = 0  # Token inputs only.
  num_layers: int = 2
  width: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  max_len: int = 512  # Positions of the learned table (with the CLS token).
  positions: str = 'sinusoidal'
  pooling: str = 'cls'
  dropout_rate: float = 0.1
  score: str = 'dot'
  attention_impl: str = 'xla'
  remat: str = 'none'  # none | full | dots | dots_no_batch (layers.REMAT_POLICIES)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
    check_choice('model.pooling', self.pooling, POOLINGS)
    attention.check_heads(self.width, self.num_heads)
    if jnp.issubdtype(inputs.dtype, jnp.integer):
      if self.vocab_size < 1:
        raise ConfigError('model.vocab_size must be set (> 0) for token inputs')
      valid = inputs != 0  # [B, L]
      x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(1.0),
                   dtype=self.dtype, name='embed')(inputs)
    else:
      b, steps = inputs.shape[:2]
      x = nn.Dense(self.width, dtype=self.dtype, name='embed')(
          inputs.reshape(b, steps, -1).astype(self.dtype))
      valid = jnp.ones((b, steps), bool)
    if self.pooling == 'cls':
      cls = self.param('cls', nn.initializers.normal(0.02), (1, 1, self.width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(x.dtype), x],
                          axis=1)
      valid = jnp.concatenate([jnp.ones((x.shape[0], 1), bool), valid], axis=1)
    x = Positions(self.positions, self.max_len, self.dtype)(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    mask = attention.make_mask(x.shape[1], x.shape[1], kv_valid=valid)  # [B, 1, 1, T]
    block = _block(self)
    for i in range(self.num_layers):
      x = block(name=f'block{i}')(x, mask, train, False)  # Not causal.
    x = nn.LayerNorm(dtype=self.dtype, name='ln_f')(x)
    if self.pooling == 'cls':
      pooled = x[:, 0]
    else:
      w = valid[..., None].astype(x.dtype)
      pooled = (x * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(pooled).astype(jnp.float32)


class EncoderDecoder(nn.Module):
  """Source ids [B, S] and decoder inputs [B, T] (0 pads) -> next-token logits [B, T, V] (float32).

  One vocabulary and token embedding for both sides. The output projection is not tied to the
  (unit-variance) embedding: tied, an untrained decoder repeats its input token.
  Inputs are only ever padded at the end (0), so causal decoding needs no target padding mask.
  """
  vocab_size: int
  num_layers: int = 2  # Per side.
  width: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  max_len: int = 128  # Longest source or target (learned positions).
  positions: str = 'sinusoidal'
  dropout_rate: float = 0.0
  score: str = 'dot'
  attention_impl: str = 'xla'
  remat: str = 'none'  # none | full | dots | dots_no_batch (layers.REMAT_POLICIES)
  dtype: Any = jnp.float32

  def setup(self):
    check_choice('model.positions', self.positions, POSITIONS)
    attention.check_heads(self.width, self.num_heads)
    self.embed = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(1.0),
                          dtype=self.dtype)
    self.src_pos = Positions(self.positions, self.max_len, self.dtype)
    self.tgt_pos = Positions(self.positions, self.max_len, self.dtype)
    self.drop = nn.Dropout(self.dropout_rate)
    block = _block(self)
    self.encoder = [block(name=f'encoder{i}') for i in range(self.num_layers)]
    self.decoder = [block(name=f'decoder{i}') for i in range(self.num_layers)]
    self.ln_enc = nn.LayerNorm(dtype=self.dtype)
    self.ln_dec = nn.LayerNorm(dtype=self.dtype)
    self.head = nn.Dense(self.vocab_size, dtype=self.dtype,
                         kernel_init=nn.initializers.normal(0.02))

  def encode(self, source: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Source ids [B, S] -> (memory [B, S, W], valid [B, S])."""
    valid = source != 0
    x = self.drop(self.src_pos(self.embed(source)), deterministic=not train)
    mask = attention.make_mask(x.shape[1], x.shape[1], kv_valid=valid)
    for block in self.encoder:
      x = block(x, mask, train, False)  # Not causal.
    return self.ln_enc(x), valid

  def decode(self, memory: jax.Array, valid: jax.Array, decoder_input: jax.Array,
             train: bool = False) -> jax.Array:
    """Decoder inputs [B, T] (BOS, y_1, ...) -> logits [B, T, V]: position t predicts y_{t+1}.

    Causal: logits at t never read inputs after t, so padding at the end changes nothing before.
    """
    x = self.drop(self.tgt_pos(self.embed(decoder_input)), deterministic=not train)
    memory_mask = attention.make_mask(x.shape[1], memory.shape[1], kv_valid=valid)
    for block in self.decoder:
      x = block(x, None, train, True, memory, memory_mask)  # Causal, with cross-attention.
    return self.head(self.ln_dec(x)).astype(jnp.float32)

  def __call__(self, inputs: tuple[jax.Array, jax.Array], train: bool = False) -> jax.Array:
    source, decoder_input = inputs
    memory, valid = self.encode(source, train)
    return self.decode(memory, valid, decoder_input, train)
