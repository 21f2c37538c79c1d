"""Recurrent networks: the Elman RNN and the LSTM.

Both cells follow the standard equations, with the input projection of every time step hoisted out
of the recurrence as one matmul (the loop does only h_{t-1} @ W_hh):

  RNN:   h_t = tanh(W_ih x_t + b + W_hh h_{t-1})
  LSTM:  [i, f, g, o] = W_ih x_t + b + W_hh h_{t-1}      (gate order of torch.nn.LSTM)
         c_t = σ(f) c_{t-1} + σ(i) tanh(g),   h_t = σ(o) tanh(c_t)

The output gate reads x_t and h_{t-1} like the others (not the cell state), and the forget-gate bias
starts at 1. A padding mask freezes the state on padded steps, so a classifier's final state is
that of each sequence's last valid step. `lstm_impl` selects how the LSTM recurrence runs:

- `xla`: the `lax.scan` below (with its own backward).
- `pallas`: the fused Pallas kernel of dl10_jax/kernels/lstm.py (Triton on GPUs, Mosaic on TPUs);
  one error line on CPU or where W_hh does not fit the chip. `lstm_blocks` = (batch,) or
  (batch, time) overrides its block sizes.
- `auto`: the kernel on GPU/TPU where the shape allows, the scan otherwise (CPU); logged once.
- `pallas_interpret_triton` / `pallas_interpret_tpu`: that kernel in Pallas interpret mode, on any
  backend. For tests on CPU only: correct but far slower than `xla`, so `auto` never picks them.

Models: `RecurrentLM` (embedding -> stack -> vocabulary logits, with a state cache for sampling)
and `RecurrentClassifier` (token ids or images read as sequences -> stack -> pooled -> logits).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax import runtime
from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.kernels import lstm as lstm_kernel

CELLS = ('rnn', 'lstm')
INTERPRET_IMPLS = {'pallas_interpret_triton': 'triton', 'pallas_interpret_tpu': 'tpu'}
LSTM_IMPLS = ('xla', 'pallas', 'auto', *INTERPRET_IMPLS)
KERNEL_BACKENDS = {'gpu': 'triton', 'tpu': 'tpu'}  # jax.default_backend() -> LSTM kernel variant.
POOLINGS = ('last', 'mean')
Carry = tuple[jax.Array, ...]  # (h,) for the RNN, (h, c) for the LSTM; each [B, H] float32.


def cell_step(cell: str, z: jax.Array, c_prev: jax.Array | None):
  """The cell: (h, c, gate activations) from pre-activations z [B, G*H] (float32) and c_{t-1}."""
  if cell == 'rnn':
    h = jnp.tanh(z)
    return h, None, h
  i, f, g, o = jnp.split(z, 4, axis=-1)
  i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
  c = f * c_prev + i * g
  return o * jnp.tanh(c), c, jnp.concatenate([i, f, g, o], axis=-1)


def reference_recurrence(cell: str, xw: jax.Array, w_hh: jax.Array, carry: Carry,
                         mask: jax.Array | None = None) -> tuple[jax.Array, Carry]:
  """The plain `lax.scan` recurrence, differentiated by JAX: what `recurrence` and the LSTM kernel
  (kernels/lstm.reference_lstm) are tested against. h_{t-1} @ W_hh accumulates in float32."""

  def step(carry, inputs):
    xw_t, m_t = inputs
    z = xw_t.astype(jnp.float32) + jnp.dot(carry[0].astype(w_hh.dtype), w_hh,
                                           preferred_element_type=jnp.float32)
    h, c, _ = cell_step(cell, z, carry[1] if cell == 'lstm' else None)
    new = (h, c) if cell == 'lstm' else (h,)
    if m_t is None:
      return new, h
    keep = m_t[:, None] > 0
    return tuple(jnp.where(keep, n, old) for n, old in zip(new, carry)), jnp.where(keep, h, 0.0)

  carry, hs = jax.lax.scan(step, tuple(x.astype(jnp.float32) for x in carry), (xw, mask))
  return hs, carry


def resolve_lstm_impl(impl: str, xw: jax.Array, w_hh: jax.Array,
                      blocks: tuple[int, ...] = ()) -> tuple[str, lstm_kernel.LstmBlocks | None]:
  """('xla', None) for the scan, or (kernel variant, its blocks); one error line if impl can't run.

  xw [T, B, 4H] and w_hh give the shape and dtypes; blocks is `model.lstm_blocks`.
  """
  check_choice('model.lstm_impl', impl, LSTM_IMPLS)
  if impl == 'xla':
    return 'xla', None
  platform = jax.default_backend()
  variant = INTERPRET_IMPLS.get(impl) or KERNEL_BACKENDS.get(platform)
  if variant is None:
    if impl == 'auto':
      runtime.log_once(f'lstm_impl=auto uses xla ({platform}: the Pallas LSTM runs on GPU or TPU)')
      return 'xla', None
    raise ConfigError(f'model.lstm_impl=pallas needs a GPU or TPU, but the backend is {platform}; '
                      'use xla or auto')
  (time, batch, _), hidden = xw.shape, w_hh.shape[0]
  chosen = lstm_kernel.override_blocks(
      lstm_kernel.choose_blocks(variant, batch, time, hidden, xw.dtype, w_hh.dtype), blocks)
  reason = lstm_kernel.unsupported_reason(variant, chosen, hidden, xw.dtype, w_hh.dtype)
  if impl == 'auto' and variant == 'triton' and (
      lstm_kernel.padded_hidden(variant, hidden) > lstm_kernel.TRITON_AUTO_MAX_HIDDEN):
    reason = reason or f'on GPUs the scan is faster at hidden {hidden}'
  if impl == 'auto':
    why = reason or f'{platform}, hidden {hidden}, {jnp.dtype(xw.dtype).name}, {chosen}'
    runtime.log_once(f'lstm_impl=auto uses {"xla" if reason else f"pallas ({variant})"} ({why})')
    return ('xla', None) if reason else (variant, chosen)
  if reason:
    raise ConfigError(f'model.lstm_impl={impl}: {reason}')
  return variant, chosen


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _scan(cell: str, has_mask: bool, xw, w_hh, h0, c0, mask):
  return _scan_fwd(cell, has_mask, xw, w_hh, h0, c0, mask)[0]


def _scan_fwd(cell, has_mask, xw, w_hh, h0, c0, mask):
  """Forward: the states, and per step what the backward needs (gate activations, new cells)."""

  def step(carry, inputs):
    h_prev, c_prev = carry
    xw_t, m_t = inputs
    z = xw_t.astype(jnp.float32) + (h_prev.astype(w_hh.dtype) @ w_hh).astype(jnp.float32)
    h, c, acts = cell_step(cell, z, c_prev)
    if cell == 'rnn':
      c = c_prev  # Unused: a [B, 0] placeholder.
    y = h
    if has_mask:
      keep = m_t[:, None]
      y = h * keep
      h, c_new = keep * h + (1 - keep) * h_prev, keep * c + (1 - keep) * c_prev
      return (h, c_new), (y, h, c_new, c, acts)
    return (h, c), (y, h, c, c, acts)

  (h, c), (ys, hc, cc, cn, acts) = jax.lax.scan(step, (h0, c0), (xw, mask))
  residuals = (xw, w_hh, h0, c0, mask, hc, cc, cn, acts)
  return (ys, h, c), residuals


def _scan_bwd(cell, has_mask, residuals, cotangents):
  """Backward in reverse time; the weight gradient is one matmul over all steps afterwards."""
  xw, w_hh, h0, c0, mask, hc, cc, cn, acts = residuals
  dys, dh_last, dc_last = cotangents
  h_prev = jnp.concatenate([h0[None], hc[:-1]])  # [T, B, H]
  c_prev = jnp.concatenate([c0[None], cc[:-1]])

  def step(carry, inputs):
    dh, dc = carry  # Gradients w.r.t. the state after this step.
    dy, m_t, act, c_new, cp = inputs
    keep = m_t[:, None] if has_mask else 1.0
    dhn = keep * (dh + dy)
    if cell == 'rnn':
      dz = dhn * (1 - act * act)
      dc_prev = dc
    else:
      i, f, g, o = jnp.split(act, 4, axis=-1)
      tanh_c = jnp.tanh(c_new)
      dcn = keep * dc + dhn * o * (1 - tanh_c * tanh_c)
      dz = jnp.concatenate([dcn * g * i * (1 - i), dcn * cp * f * (1 - f),
                            dcn * i * (1 - g * g), dhn * tanh_c * o * (1 - o)], axis=-1)
      dc_prev = dcn * f + ((1 - keep) * dc if has_mask else 0.0)
    dh_prev = (dz.astype(w_hh.dtype) @ w_hh.T).astype(jnp.float32)
    if has_mask:
      dh_prev = dh_prev + (1 - keep) * dh
    return (dh_prev, dc_prev), dz

  (dh0, dc0), dz = jax.lax.scan(step, (dh_last, dc_last), (dys, mask, acts, cn, c_prev),
                                reverse=True)
  dw = jnp.einsum('tbh,tbg->hg', h_prev.astype(w_hh.dtype), dz.astype(w_hh.dtype),
                  preferred_element_type=jnp.float32)
  return (dz.astype(xw.dtype), dw.astype(w_hh.dtype), dh0, dc0, jnp.zeros_like(mask))


_scan.defvjp(_scan_fwd, _scan_bwd)


def recurrence(cell: str, xw: jax.Array, w_hh: jax.Array, carry: Carry,
               mask: jax.Array | None = None, reverse: bool = False,
               impl: str = 'xla', blocks: tuple[int, ...] = ()) -> tuple[jax.Array, Carry]:
  """Runs `cell` over time. xw [T, B, G*H] (inputs already projected), w_hh [H, G*H].

  Returns the hidden states [T, B, H] and the final carry. Where mask [T, B] is 0 the carry is
  kept and the output is 0. A custom VJP runs the backward as one reverse scan that does only
  dz_t @ W_hh^T per step, and computes dW_hh after it as a single matmul over all steps (JAX's own
  derivative of the scan would accumulate a small weight-gradient matmul in every step). The LSTM
  runs the Pallas kernel instead where `impl` (and `blocks`, the kernel's override) says so.
  """
  check_choice('model.cell', cell, CELLS)
  variant, kernel_blocks = (resolve_lstm_impl(impl, xw, w_hh, blocks) if cell == 'lstm'
                            else ('xla', None))
  if reverse:
    xw, mask = xw[::-1], None if mask is None else mask[::-1]
  if variant != 'xla':
    hs, (h, c) = lstm_kernel.lstm(xw, w_hh, carry[0], carry[1], mask, backend=variant,
                                  interpret=impl in INTERPRET_IMPLS, blocks=kernel_blocks)
    return (hs[::-1] if reverse else hs), (h, c)
  h0 = carry[0].astype(jnp.float32)
  c0 = carry[1].astype(jnp.float32) if cell == 'lstm' else jnp.zeros(h0.shape[:1] + (0,))
  has_mask = mask is not None
  mask = mask.astype(jnp.float32) if has_mask else jnp.zeros(xw.shape[:2], jnp.float32)
  hs, h, c = _scan(cell, has_mask, xw, w_hh, h0, c0, mask)
  return (hs[::-1] if reverse else hs), ((h, c) if cell == 'lstm' else (h,))


class RecurrentLayer(nn.Module):
  """One recurrent layer over [B, T, F] inputs; parameters `input` (Dense) and `recurrent_kernel`."""
  cell: str
  features: int
  reverse: bool = False
  lstm_impl: str = 'xla'
  dtype: Any = jnp.float32
  lstm_blocks: tuple[int, ...] = ()  # The LSTM kernel's (batch,) or (batch, time) blocks; ().

  def zero_carry(self, batch_size: int) -> Carry:
    zeros = jnp.zeros((batch_size, self.features), jnp.float32)
    return (zeros, zeros) if self.cell == 'lstm' else (zeros,)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               carry: Carry | None = None) -> tuple[jax.Array, Carry]:
    check_choice('model.cell', self.cell, CELLS)
    gates = 4 if self.cell == 'lstm' else 1
    h = self.features

    def bias_init(key, shape, dtype=jnp.float32):
      if self.cell == 'lstm':  # Forget gate (the second quarter) starts open.
        return jnp.zeros(shape, dtype).at[h:2 * h].set(1.0)
      return jnp.zeros(shape, dtype)

    xw = nn.Dense(gates * h, dtype=self.dtype, bias_init=bias_init, name='input')(x)  # [B, T, G*H]
    w_hh = self.param('recurrent_kernel', nn.initializers.orthogonal(column_axis=-1),
                      (h, gates * h), jnp.float32).astype(self.dtype)
    if carry is None:
      carry = self.zero_carry(x.shape[0])
    time_mask = None if mask is None else mask.T  # [T, B]
    hs, carry = recurrence(self.cell, xw.swapaxes(0, 1), w_hh, carry, time_mask, self.reverse,
                           self.lstm_impl, self.lstm_blocks)
    return hs.swapaxes(0, 1).astype(self.dtype), carry  # [B, T, H]


class RecurrentStack(nn.Module):
  """`num_layers` layers (each optionally bidirectional), dropout between layers."""
  cell: str
  features: int
  num_layers: int
  bidirectional: bool = False
  dropout_rate: float = 0.0
  lstm_impl: str = 'xla'
  dtype: Any = jnp.float32
  lstm_blocks: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, train: bool,
               carries: list[Carry] | None = None) -> tuple[jax.Array, list[Carry]]:
    """x [B, T, F] -> ([B, T, H or 2H], final carries: one per layer and direction)."""
    out_carries = []
    for layer in range(self.num_layers):
      if layer:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      directions = (False, True) if self.bidirectional else (False,)
      outputs = []
      for reverse in directions:
        index = len(out_carries)
        name = f'layer{layer}' + ('_reverse' if reverse else '')
        y, carry = RecurrentLayer(self.cell, self.features, reverse, self.lstm_impl, self.dtype,
                                  self.lstm_blocks, name=name)(
                                      x, mask, None if carries is None else carries[index])
        outputs.append(y)
        out_carries.append(carry)
      x = jnp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
    return x, out_carries


class RecurrentLM(nn.Module):
  """Token ids [B, T] -> next-token logits [B, T, V]: embedding -> stack -> dense (or tied)."""
  vocab_size: int
  cell: str = 'lstm'
  embed_dim: int = 128
  hidden_size: int = 512
  num_layers: int = 1
  dropout_rate: float = 0.0
  tie_embeddings: bool = False
  lstm_impl: str = 'xla'
  dtype: Any = jnp.float32
  lstm_blocks: tuple[int, ...] = ()

  def setup(self):
    if self.tie_embeddings and self.embed_dim != self.hidden_size:
      raise ConfigError(f'model.tie_embeddings needs embed_dim == hidden_size, not '
                        f'{self.embed_dim} and {self.hidden_size}')
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype)
    self.stack = RecurrentStack(self.cell, self.hidden_size, self.num_layers,
                                dropout_rate=self.dropout_rate, lstm_impl=self.lstm_impl,
                                dtype=self.dtype, lstm_blocks=self.lstm_blocks)
    self.dropout = nn.Dropout(self.dropout_rate)
    if not self.tie_embeddings:
      self.head = nn.Dense(self.vocab_size, dtype=self.dtype)

  def _logits(self, h: jax.Array) -> jax.Array:
    logits = self.embed.attend(h) if self.tie_embeddings else self.head(h)
    return logits.astype(jnp.float32)

  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    x = self.dropout(self.embed(tokens), deterministic=not train)
    h, _ = self.stack(x, None, train)
    return self._logits(self.dropout(h, deterministic=not train))

  def flops_per_token(self, params: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matmul parameter (the embedding is a lookup unless tied)."""
    del seq_len
    lookup = () if self.tie_embeddings else ('embed',)
    return 6.0 * sum(x.size for k, v in params.items() if k not in lookup
                     for x in jax.tree.leaves(v))

  # --- Incremental decoding (models/decoding.generate): the cache is the recurrent state. ---

  def init_cache(self, batch_size: int, max_len: int) -> list[Carry]:
    del max_len  # A recurrent state has a fixed size.
    zeros = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
    return [(zeros, zeros) if self.cell == 'lstm' else (zeros,)] * self.num_layers

  def extend(self, tokens: jax.Array, cache: list[Carry], start: jax.Array,
             length: jax.Array) -> tuple[jax.Array, list[Carry]]:
    """Feeds tokens [B, t] of which the first `length` are real; returns logits [B, t, V]."""
    del start  # The state already holds the position.
    mask = jnp.broadcast_to(jnp.arange(tokens.shape[1]) < length, tokens.shape)
    h, cache = self.stack(self.embed(tokens), mask, False, cache)
    return self._logits(h), cache


class RecurrentClassifier(nn.Module):
  """A sequence classifier: ids [B, L] (0 pads) or images [B, H, W, C] -> logits [B, classes].

  Images are read as sequences of rows ([B, H, W*C], `image_steps='rows'`) or of pixels
  ([B, H*W, C], `'pixels'`). The sequence representation is the final state of the last valid
  step (`pooling='last'`; both directions' if bidirectional) or the masked mean over time
  (`'mean'`).
  """
  num_classes: int
  vocab_size: int = 0  # Token inputs only.
  cell: str = 'lstm'
  embed_dim: int = 128
  hidden_size: int = 128
  num_layers: int = 2
  bidirectional: bool = False
  pooling: str = 'last'
  image_steps: str = 'rows'
  dropout_rate: float = 0.0
  lstm_impl: str = 'xla'
  dtype: Any = jnp.float32
  lstm_blocks: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
    check_choice('model.pooling', self.pooling, POOLINGS)
    if jnp.issubdtype(inputs.dtype, jnp.integer):
      if self.vocab_size < 1:
        raise ConfigError('model.vocab_size must be set (> 0) for token inputs')
      mask = inputs != 0  # [B, L]
      x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype)(inputs)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    else:
      check_choice('model.image_steps', self.image_steps, ('rows', 'pixels'))
      b, height, width, channels = inputs.shape
      steps = height if self.image_steps == 'rows' else height * width
      x = inputs.reshape(b, steps, -1).astype(self.dtype)
      mask = None
    h, carries = RecurrentStack(self.cell, self.hidden_size, self.num_layers, self.bidirectional,
                                self.dropout_rate, self.lstm_impl, self.dtype,
                                self.lstm_blocks)(x, mask, train)
    if self.pooling == 'last':
      last = carries[-2:] if self.bidirectional else carries[-1:]
      pooled = jnp.concatenate([c[0] for c in last], axis=-1)
    elif mask is None:
      pooled = h.mean(axis=1)
    else:
      weights = mask[..., None].astype(h.dtype)
      pooled = (h * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    return nn.Dense(self.num_classes, dtype=self.dtype)(pooled).astype(jnp.float32)
