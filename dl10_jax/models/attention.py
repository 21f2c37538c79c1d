"""Attention: the one scaled dot-product attention function every model calls.

`dot_product_attention(q, k, v, ..., impl=...)` hides how attention runs, so a model never changes
when a faster implementation arrives (`config.model.attention_impl`):

- `xla`: plain jnp, the reference every other implementation is tested against.
- `blocked`: causal self-attention in query blocks that skip the keys above the diagonal (about
  40 % fewer FLOPs at T = 256); plain jnp, the fastest on CPU, where XLA runs each batched
  matmul on one core.
- `cudnn`: `jax.nn.dot_product_attention(implementation='cudnn')` (NVIDIA GPUs, fp16/bf16).
- `pallas`: the Pallas flash-attention kernels (`kernels/flash_attention.py`: Triton on GPUs,
  Mosaic on TPUs; a clear error on CPU). They take no mask but causal and key padding
  ([B, 1, 1, Tk], what `make_mask(kv_valid=...)` builds); any other mask, or a call that asks for
  the weights, runs `xla` (logged once).
- `pallas_interpret`: the same kernels in the Pallas interpreter, on any backend: for tests on CPU
  (slow; `auto` never picks it).
- `auto`: the fastest measured for the backend, dtype and shape, logged once: on a GPU with
  16-bit inputs `cudnn` where it applies (head dim a multiple of 8 up to 128, no weights asked
  for), else `pallas`; on a TPU `pallas` for 16-bit inputs; `blocked` for causal on CPU; else
  `xla`. That order is the measured one (experiments/kernels/README.md).

Layout [B, T, H, D] (batch, time, heads, head dim) as in `jax.nn.dot_product_attention`; keys and
values may have fewer heads than queries (grouped-query attention).

`MultiHeadAttention` is the one attention layer every model uses (self- or cross-attention, scaled
dot-product or additive scores, masks, weights on request, a key/value cache for decoding). The
hard kinds (hard_attention.py) subclass it and replace only the step from scores to weights, so a
config swaps them by one field; GPT's subclass replaces only the projections (gpt.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dl10_jax import runtime
from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.kernels import flash_attention

IMPLS = ('xla', 'blocked', 'cudnn', 'pallas', 'pallas_interpret', 'auto')
SCORES = ('dot', 'additive')
MASKED = float(jnp.finfo(jnp.float32).min)  # The score of a masked key: softmax weight 0, no NaN.
BLOCK = 64  # Query block of `blocked`.


def resolve_impl(impl: str, dtype: jnp.dtype, causal_only: bool = False,
                 flash_ok: bool = False, cudnn_ok: bool = False) -> str:
  """The implementation `impl` stands for here; a clear error if this backend cannot run it.

  causal_only: the call is causal self-attention without another mask (what `blocked` runs).
  flash_ok: the Pallas kernel can compute this call (its mask, head dim and dtype).
  cudnn_ok: cuDNN can (head dim, no weights asked for); the dtype is checked here.
  """
  check_choice('attention_impl', impl, IMPLS)
  backend = jax.default_backend()
  half = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
  if impl == 'auto':
    reason = f'{backend}, {jnp.dtype(dtype).name}' + (', causal' if causal_only else '')
    if backend == 'gpu' and half and cudnn_ok:
      choice = 'cudnn'
    elif backend in ('gpu', 'tpu') and half and flash_ok:
      choice = 'pallas'
    elif backend == 'cpu' and causal_only:
      choice = 'blocked'
    else:
      choice = 'xla'
    runtime.log_once(f'attention_impl=auto uses {choice} ({reason})')
    return choice
  if impl == 'blocked' and not causal_only:
    return 'xla'  # Blocks only pay for causal self-attention; anything else is plain attention.
  if impl == 'cudnn' and backend != 'gpu':
    raise ConfigError(f'attention_impl=cudnn needs an NVIDIA GPU, but the backend is {backend}; '
                      'use xla or auto')
  if impl == 'pallas' and backend not in ('gpu', 'tpu'):
    raise ConfigError(f'attention_impl=pallas needs a GPU or TPU, but the backend is {backend}; '
                      'use xla or auto (pallas_interpret runs the kernel in the Pallas '
                      'interpreter, for tests)')
  return impl


def check_heads(width: int, num_heads: int) -> None:
  """The one-line error for a model width that does not split into heads of an even dimension
  (rotary position embeddings turn pairs of features)."""
  if width % num_heads or (width // num_heads) % 2:
    raise ConfigError(f'model.width={width} must be a multiple of model.num_heads={num_heads} '
                      'with an even head dimension')


def make_mask(q_len: int, k_len: int, *, causal: bool = False, q_offset: jax.Array | int = 0,
              q_segment_ids: jax.Array | None = None, kv_segment_ids: jax.Array | None = None,
              kv_valid: jax.Array | None = None) -> jax.Array | None:
  """Boolean [B or 1, 1, Tq, Tk] mask: True where a query may attend to a key.

  causal: query i (at absolute position q_offset + i) sees keys at positions <= its own.
  segment ids [B, T]: queries see only keys of their own segment (packed sequences).
  kv_valid [B, Tk]: False marks padding keys.
  """
  mask = None

  def combine(m):
    return m if mask is None else mask & m

  if causal:
    q_pos = jnp.arange(q_len)[:, None] + q_offset
    mask = combine((jnp.arange(k_len)[None, :] <= q_pos)[None, None])
  if q_segment_ids is not None:
    kv = q_segment_ids if kv_segment_ids is None else kv_segment_ids
    mask = combine((q_segment_ids[:, :, None] == kv[:, None, :])[:, None])
  if kv_valid is not None:
    mask = combine(kv_valid[:, None, None, :].astype(bool))
  return mask


def _grouped_scores(q, k, mask, scale):
  """q [B, Tq, H, D], k [B, Tk, K, D] -> float32 scores [B, K, G, Tq, Tk] (H = K * G), masked."""
  groups = q.shape[2] // k.shape[2]
  b, tq, _, d = q.shape
  qg = q.reshape(b, tq, k.shape[2], groups, d)  # [B, Tq, K, G, D]
  scores = jnp.einsum('bqkgd,bskd->bkgqs', qg, k).astype(jnp.float32) * scale
  if mask is not None:  # [B|1, H|1, Tq, Tk] -> [B|1, K|1, G|1, Tq, Tk]
    m = jnp.broadcast_to(mask, (mask.shape[0], q.shape[2], tq, k.shape[1]))
    m = m.reshape(mask.shape[0], k.shape[2], groups, tq, k.shape[1])
    scores = jnp.where(m, scores, MASKED)
  return scores


def _xla(q, k, v, mask, scale, return_weights):
  b, tq = q.shape[:2]
  weights = jax.nn.softmax(_grouped_scores(q, k, mask, scale), axis=-1)
  out = jnp.einsum('bkgqs,bskd->bqkgd', weights.astype(v.dtype), v).reshape(q.shape)
  if return_weights:
    return out, weights.reshape(b, q.shape[2], tq, k.shape[1])
  return out


def _blocked_causal(q, k, v, scale):
  """Causal self-attention, query block by query block, each reading only the keys it may see."""
  b, t, h, d = q.shape
  groups = h // k.shape[2]
  outs = []
  for start in range(0, t, BLOCK):
    end = min(start + BLOCK, t)
    qb = q[:, start:end].reshape(b, end - start, k.shape[2], groups, d)
    scores = jnp.einsum('bqkgd,bskd->bkgqs', qb, k[:, :end]).astype(jnp.float32) * scale
    visible = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]  # [Tq, Tk]
    weights = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
    out = jnp.einsum('bkgqs,bskd->bqkgd', weights.astype(v.dtype), v[:, :end])
    outs.append(out.reshape(b, end - start, h, d))
  return jnp.concatenate(outs, axis=1)


def _check_shapes(q, k, v, mask) -> None:
  if q.ndim != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or q.shape[2] % k.shape[2] \
      or q.shape[3] != k.shape[3]:
    raise ConfigError(f'attention shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit: need '
                      'q [B, Tq, H, D] and k = v [B, Tk, K, D] with H a multiple of K')
  if mask is not None:
    want = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    if mask.ndim != 4 or any(m not in (1, w) for m, w in zip(mask.shape, want)):
      raise ConfigError(f'attention mask of shape {mask.shape} does not broadcast to [B, H, Tq, Tk]'
                        f' = {want}')


def _key_padding(mask: jax.Array | None, batch: int, k_len: int):
  """(whether the flash kernel can apply `mask`, its kv_valid [B, Tk] or None).

  It can when there is none, or when the mask only drops keys ([B|1, 1, 1, Tk]: padding).
  """
  if mask is None:
    return True, None
  if mask.shape[1] == 1 and mask.shape[2] == 1:
    return True, jnp.broadcast_to(mask[:, 0, 0, :], (batch, k_len))
  return False, None


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          mask: jax.Array | None = None, causal: bool = False,
                          impl: str = 'xla', scale: float | None = None,
                          return_weights: bool = False):
  """softmax(q k^T * scale + masked) v.  q [B, Tq, H, D], k / v [B, Tk, K, D] (H % K == 0).

  mask: boolean, broadcastable to [B, H, Tq, Tk] (see `make_mask`); causal adds the causal mask.
  Returns [B, Tq, H, D] (and the weights [B, H, Tq, Tk] with return_weights, `xla` only).
  """
  _check_shapes(q, k, v, mask)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  mask_ok, kv_valid = _key_padding(mask, q.shape[0], k.shape[1])
  flash_ok = mask_ok and not return_weights and flash_attention.supports(q.shape[-1], q.dtype)
  cudnn_ok = not return_weights and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128
  impl = resolve_impl(impl, q.dtype, causal and mask is None and q.shape[1] == k.shape[1],
                      flash_ok, cudnn_ok)
  if impl in ('pallas', 'pallas_interpret'):
    if flash_ok:
      return flash_attention.flash_attention(q, k, v, causal=causal, kv_valid=kv_valid,
                                             scale=scale, interpret=impl == 'pallas_interpret')
    reason = ('the weights were asked for' if return_weights else
              f'mask {mask.shape}, head dim {q.shape[-1]}, {jnp.dtype(q.dtype).name}')
    runtime.log_once(f'attention_impl={impl} runs xla here ({reason})')
    impl = 'xla'
  if impl == 'cudnn' and return_weights:
    runtime.log_once(f'attention_impl={impl} runs xla here (the weights were asked for)')
    impl = 'xla'
  if impl == 'blocked' and not return_weights:
    return _blocked_causal(q, k, v, scale)
  if impl in ('xla', 'blocked'):
    if causal:
      causal_mask = make_mask(q.shape[1], k.shape[1], causal=True)
      mask = causal_mask if mask is None else mask & causal_mask
    return _xla(q, k, v, mask, scale, return_weights)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=causal,
                                      implementation=impl)


# --- Scores and weighted sums, for what the fused implementations cannot express. ---

def _with_causal(mask: jax.Array | None, q_len: int, k_len: int, causal: bool):
  if not causal:
    return mask
  causal_mask = make_mask(q_len, k_len, causal=True)
  return causal_mask if mask is None else mask & causal_mask


def attention_scores(q: jax.Array, k: jax.Array, *, mask: jax.Array | None = None,
                     causal: bool = False, scale: float | None = None) -> jax.Array:
  """Scaled dot-product scores, float32 [B, H, Tq, Tk]; masked keys score `MASKED`."""
  _check_shapes(q, k, k, mask)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  scores = _grouped_scores(q, k, _with_causal(mask, q.shape[1], k.shape[1], causal), scale)
  return scores.reshape(q.shape[0], q.shape[2], q.shape[1], k.shape[1])


def additive_scores(q: jax.Array, k: jax.Array, w: jax.Array, *, mask: jax.Array | None = None,
                    causal: bool = False) -> jax.Array:
  """Additive (Bahdanau et al. 2015) scores w . tanh(q_i + k_j), float32 [B, H, Tq, Tk].

  q [B, Tq, H, D] and k [B, Tk, K, D] are the already projected W_q x and W_k y; w [H, D].
  """
  _check_shapes(q, k, k, mask)
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)  # Grouped-query: each key head serves G.
  hidden = jnp.tanh(q[:, :, None] + k[:, None, :])  # [B, Tq, Tk, H, D]
  scores = jnp.einsum('bqshd,hd->bhqs', hidden, w.astype(hidden.dtype)).astype(jnp.float32)
  mask = _with_causal(mask, q.shape[1], k.shape[1], causal)
  return scores if mask is None else jnp.where(mask, scores, MASKED)


def attend(weights: jax.Array, v: jax.Array) -> jax.Array:
  """sum_j weights[b, h, i, j] v[b, j, h // G]: weights [B, H, Tq, Tk], v [B, Tk, K, D] ->
  [B, Tq, H, D]."""
  b, h, tq, tk = weights.shape
  kv_heads = v.shape[2]
  wg = weights.reshape(b, kv_heads, h // kv_heads, tq, tk).astype(v.dtype)
  return jnp.einsum('bkgqs,bskd->bqkgd', wg, v).reshape(b, tq, h, v.shape[-1])


# --- The soft attention layer. ---

Cache = dict[str, jax.Array]  # A layer's {'k', 'v'}: [B, max_len, K, D].


class MultiHeadAttention(nn.Module):
  """Multi-head attention: project, score, normalise (softmax here), weight the values, project.

  The one attention layer of every model. Self-attention when `inputs_kv` is None, else
  cross-attention. Dot-product scores run through `dot_product_attention` (so `attention_impl`
  applies); additive scores, and any call that asks for the weights, run in plain jnp. `rotate`
  (e.g. layers.rotary) turns queries and keys by their positions (self-attention). A `cache`
  makes it incremental causal self-attention (decoding). Subclasses override `normalize` (the
  hard kinds) or `project` / `project_out` (GPT's fused layout) only.
  """
  num_heads: int = 1
  num_kv_heads: int = 0  # 0: num_heads; a divisor of it: grouped-query attention.
  head_dim: int = 0  # 0: the query width / num_heads.
  out_features: int = 0  # 0: the query width.
  score: str = 'dot'  # dot | additive
  attention_impl: str = 'xla'
  dropout_rate: float = 0.0  # On the output, not the weights, so fused kernels stay usable.
  rotate: Callable[[jax.Array, jax.Array], jax.Array] | None = None
  out_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  softmax_weights = True  # Class attribute: `normalize` is the softmax (fused kernels apply).

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None, *,
               mask: jax.Array | None = None, causal: bool = False, train: bool = False,
               step: jax.Array | None = None, return_weights: bool = False,
               cache: Cache | None = None, start: jax.Array | int = 0):
    """inputs_q [B, Tq, Dq], inputs_kv [B, Tk, Dk] -> [B, Tq, out] (and weights [B, H, Tq, Tk]).

    mask: boolean, broadcastable to [B, H, Tq, Tk] (attention.make_mask: padding, segments).
    step: the training step, for kinds with a schedule (hard_attention.GumbelAttention).
    cache, start: the inputs are positions start..start+Tq-1 of a sequence whose earlier keys and
    values the cache holds; their own are written at `start`, each query sees the keys up to its
    position, and the updated cache is returned last.
    """
    check_choice('attention score', self.score, SCORES)
    if self.attention_impl not in IMPLS:
      resolve_impl(self.attention_impl, self.dtype)  # Raises the one-line error.
    kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % kv_heads:
      raise ConfigError(f'num_kv_heads={kv_heads} must divide num_heads={self.num_heads}')
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    width = inputs_q.shape[-1]
    head_dim = self.head_dim or width // self.num_heads
    q, k, v = self.project(inputs_q, inputs_kv, kv_heads, head_dim)
    if self.rotate is not None:  # Static positions (an int start) make constant tables.
      arange = np.arange if isinstance(start, int) else jnp.arange
      q = self.rotate(q, start + arange(q.shape[1]))
      k = self.rotate(k, start + arange(k.shape[1]))
    if cache is not None:  # Write this chunk at `start`, attend to everything written up to it.
      cache = {name: jax.lax.dynamic_update_slice(cache[name], x.astype(cache[name].dtype),
                                                  (0, start, 0, 0))
               for name, x in (('k', k), ('v', v))}
      k, v = cache['k'].astype(q.dtype), cache['v'].astype(q.dtype)
      causal_mask = make_mask(q.shape[1], k.shape[1], causal=True, q_offset=start)
      mask, causal = causal_mask if mask is None else mask & causal_mask, False
    if self.score == 'dot' and self.softmax_weights and not return_weights:
      out, weights = dot_product_attention(q, k, v, mask=mask, causal=causal,
                                           impl=self.attention_impl), None
    else:
      if self.score == 'dot':
        scores = attention_scores(q, k, mask=mask, causal=causal)
      else:
        w = self.param('score_vector', nn.initializers.normal(head_dim ** -0.5),
                       (self.num_heads, head_dim))
        scores = additive_scores(q, k, w, mask=mask, causal=causal)
      weights = self.normalize(scores, q, k, train=train, step=step)  # [B, H, Tq, Tk]
      out = attend(weights, v)
    y = self.project_out(out, self.out_features or width)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    extra = ((weights,) if return_weights else ()) + ((cache,) if cache is not None else ())
    return (y, *extra) if extra else y

  def project(self, inputs_q: jax.Array, inputs_kv: jax.Array, kv_heads: int,
              head_dim: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B, Tq, H, D], k and v [B, Tk, K, D]: separate `query`, `key` and `value` projections."""
    dense = functools.partial(nn.DenseGeneral, dtype=self.dtype)
    q = dense((self.num_heads, head_dim), name='query')(inputs_q)
    k = dense((kv_heads, head_dim), name='key')(inputs_kv)
    v = dense((kv_heads, head_dim), name='value')(inputs_kv)
    return q, k, v

  def project_out(self, out: jax.Array, features: int) -> jax.Array:
    """[B, Tq, H, D] -> [B, Tq, features] by `out`, a kernel [H, D, features]."""
    return nn.DenseGeneral(features, axis=(-2, -1), dtype=self.dtype, kernel_init=self.out_init,
                           name='out')(out)

  def normalize(self, scores: jax.Array, q: jax.Array, k: jax.Array, *, train: bool,
                step: jax.Array | None) -> jax.Array:
    """Scores [B, H, Tq, Tk] -> weights over the keys: the softmax."""
    del q, k, train, step
    return jax.nn.softmax(scores, axis=-1)
