"""Flash attention (Dao et al. 2022; FlashAttention-2, Dao 2023) as Pallas kernels for GPU and TPU.

`flash_attention(q, k, v, ...)` computes softmax(scale * q k^T + mask) v without ever writing the
[Tq, Tk] score matrix to memory: queries and keys are cut into blocks, each query block walks the
key blocks keeping a running max, sum and unnormalised output in float32 (the online softmax), and
the backward pass recomputes the scores block by block from the log-sum-exp the forward saved.
Memory is O(T) instead of O(T^2), and under `causal` the blocks above the diagonal are skipped,
not masked, so causal attention costs about half.

Two variants share the block math (`_flash_math.py`) and this module's padding, masks, block sizes
and `custom_vjp`: `_flash_triton.py` (GPUs: Pallas' Triton backend) and `_flash_tpu.py` (TPUs:
Mosaic). `interpret=True` runs either on any backend in the Pallas interpreter: how CPU-only CI
checks their numerics (`reference_attention` beside them is the plain-JAX truth), while
`jax.export` for 'cuda' and 'tpu' checks that they lower (tests/test_flash_attention.py).

Layout [B, T, H, D] as `models.attention.dot_product_attention`; k / v may have fewer heads than q
(grouped-query attention); `causal` is top-left aligned (key j visible to query i iff j <= i).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.kernels import _flash_math, _flash_tpu, _flash_triton

BACKENDS = ('triton', 'tpu')
DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
MAX_HEAD_DIM = 256
_MODULES = {'triton': _flash_triton, 'tpu': _flash_tpu}


# --- The plain-JAX reference. ---

def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                        segment_ids: Any = None, kv_valid: jax.Array | None = None,
                        scale: float | None = None) -> jax.Array:
  """What `flash_attention` computes, in plain jnp with float32 scores: the ground truth.

  Takes the same arguments; materialises the [B, H, Tq, Tk] scores, so only for checks and short
  sequences. A query whose keys are all masked averages every value (the kernels: undefined).
  """
  b, tq, h, d = q.shape
  tk, groups = k.shape[1], h // k.shape[2]
  scale = d ** -0.5 if scale is None else scale
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)  # [B, Tk, H, D]
  s = jnp.einsum('bqhd,bkhd->bhqk', q.astype(jnp.float32), k.astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST) * scale
  mask = jnp.ones((b, 1, tq, tk), bool)
  if causal:
    mask &= (jnp.arange(tk)[None, :] <= jnp.arange(tq)[:, None])[None, None]
  q_ids, kv_ids = _split_segment_ids(segment_ids, tq, tk)
  if q_ids is not None:
    mask &= (q_ids[:, :, None] == kv_ids[:, None, :])[:, None]
  if kv_valid is not None:
    mask &= kv_valid.astype(bool)[:, None, None, :]
  weights = jax.nn.softmax(jnp.where(mask, s, _flash_math.MASK_VALUE), axis=-1)
  out = jnp.einsum('bhqk,bkhd->bqhd', weights, v.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(q.dtype)


# --- Block sizes. ---

@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Query / key block lengths of the forward kernel and of both backward kernels."""
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int


# Preferred blocks (forward q, forward k, backward q, backward k) before fitting to the lengths.
# Triton: a program holds a [bq, D] query tile and [bk, D] key / value tiles in registers and
# shared memory, so bigger head dims and 4-byte inputs get smaller tiles. From the FlashAttention-2
# Triton tutorial's choices, except the 16-bit D <= 128 row, where a block sweep found 128 x 128
# throughout faster than 128 x 64 / 64 x 64 (experiments/kernels/README.md); the D <= 64 row held
# against the alternatives swept there. The fp32 rows are the tutorial's, not swept.
# TPU: one grid step costs ~0.35 us of overhead, so blocks are as large as VMEM comfortably holds
# (scores [bq, bk] float32 = 1 MiB at 512 x 512); long sequences get the large blocks.
_TRITON_TABLE = {  # (head dim <=, 16-bit inputs) -> blocks
    (64, True): (128, 128, 64, 64), (128, True): (128, 128, 128, 128),
    (256, True): (64, 32, 32, 32),
    (64, False): (64, 64, 64, 32), (128, False): (64, 32, 32, 32),
    (256, False): (32, 32, 16, 16),
}
_TPU_LONG, _TPU_SHORT = 2048, 512  # T at which TPU blocks grow to 512, and to 256.


def _triton_prefs(head_dim: int, dtype) -> tuple[int, int, int, int]:
  narrow = jnp.dtype(dtype).itemsize == 2
  return next(v for (dmax, n), v in _TRITON_TABLE.items() if head_dim <= dmax and n == narrow)


def _tpu_block(length: int, head_dim: int, dtype, backward: bool) -> int:
  block = 512 if length >= _TPU_LONG else 256 if length >= _TPU_SHORT else 128
  if backward or head_dim > 128 or jnp.dtype(dtype).itemsize == 4:
    block = min(block, 256)  # Backward tiles hold ~3x the forward's live values.
  return block


def _fit(block: int, length: int, granule: int) -> int:
  """The block, shrunk to the smallest power-of-two multiple of `granule` covering `length`."""
  covering = granule
  while covering < length:
    covering *= 2
  return min(block, covering)


def block_sizes(backend: str, dtype, head_dim: int, q_len: int, kv_len: int, *,
                block_q: int | None = None, block_k: int | None = None) -> BlockSizes:
  """The blocks `flash_attention` uses for this backend, dtype, (padded) head dim and lengths.

  block_q / block_k override both the forward and the backward blocks; an override the backend
  cannot tile is one ConfigError line (`block_error` states the rules).
  """
  if backend == 'triton':
    fq, fk, bq, bk = _triton_prefs(head_dim, dtype)
  else:
    fq, bq = (_tpu_block(q_len, head_dim, dtype, b) for b in (False, True))
    fk, bk = (_tpu_block(kv_len, head_dim, dtype, b) for b in (False, True))
  fq, bq = (block_q or _fit(x, q_len, _GRANULE[backend, 'q']) for x in (fq, bq))
  fk, bk = (block_k or _fit(x, kv_len, _GRANULE[backend, 'k']) for x in (fk, bk))
  blocks = BlockSizes(fq, fk, bq, bk)
  check_blocks(backend, blocks)
  return blocks


# The smallest legal block per backend and axis. Triton: every tile side a power of two, and
# tl.dot needs >= 16. TPU: a block's last two dims must be multiples of (8, 128) (or the whole
# array's): the query block is the sublane axis of its tiles ([bq, D], [bq, 1]), the key block
# the lane axis of the score tile and of the key segment ids ([1, bk]).
_GRANULE = {('triton', 'q'): 16, ('triton', 'k'): 16, ('tpu', 'q'): 8, ('tpu', 'k'): 128}


def block_error(backend: str, axis: str, block: int) -> str | None:
  """Why a block of this length cannot tile axis 'q' or 'k' on `backend`, or None if it can."""
  granule = _GRANULE[backend, axis]
  if backend == 'triton' and (block < granule or block & (block - 1)):
    return 'Triton blocks must be powers of two >= 16'
  if backend == 'tpu' and block % granule:
    return (f'TPU {axis} blocks must be multiples of {granule} (Mosaic tiles the last two block '
            'dims by 8 x 128)')
  return None


def check_blocks(backend: str, blocks: BlockSizes) -> None:
  """A ConfigError line for the first block of `blocks` that cannot tile on `backend`."""
  for name, block in dataclasses.asdict(blocks).items():
    if (why := block_error(backend, name[6], block)) is not None:
      raise ConfigError(f'flash attention {name}={block} does not tile on {backend}: {why}')


# --- The kernels behind one custom_vjp. ---

@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything static about one call; the kernels read their blocks and masks from it."""
  backend: str
  causal: bool
  scale: float
  kv_len: int | None  # The real key length, when padded keys must be masked by position.
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int
  interpret: Any


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_ids, kv_ids, plan: Plan):
  return _MODULES[plan.backend].forward(q, k, v, q_ids, kv_ids, plan)[0]


def _flash_fwd(q, k, v, q_ids, kv_ids, plan: Plan):
  out, lse = _MODULES[plan.backend].forward(q, k, v, q_ids, kv_ids, plan)
  return out, (q, k, v, q_ids, kv_ids, out, lse)  # The output and its log-sum-exp, no weights.


def _flash_bwd(plan: Plan, residuals, do):
  q, k, v, q_ids, kv_ids, out, lse = residuals
  delta = jnp.einsum('bqhd,bqhd->bhq', out.astype(jnp.float32), do.astype(jnp.float32))
  dq, dk, dv = _MODULES[plan.backend].backward(q, k, v, q_ids, kv_ids, do.astype(q.dtype), lse,
                                               delta[..., None], plan)
  groups = q.shape[2] // k.shape[2]
  if groups > 1:  # Per query head -> per key / value head.
    dk, dv = (x.reshape(*k.shape[:3], groups, k.shape[3]).sum(3).astype(k.dtype)
              for x in (dk, dv))
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# --- The public function. ---

def _split_segment_ids(segment_ids, q_len: int, kv_len: int):
  if segment_ids is None:
    return None, None
  if isinstance(segment_ids, (tuple, list)):
    q_ids, kv_ids = segment_ids
  else:
    if q_len != kv_len:
      raise ConfigError('one segment_ids array needs self-attention (Tq == Tk); pass the pair '
                        '(q_segment_ids, kv_segment_ids)')
    q_ids = kv_ids = segment_ids
  if q_ids.shape[1] != q_len or kv_ids.shape[1] != kv_len:
    raise ConfigError(f'segment ids of shapes {q_ids.shape} / {kv_ids.shape} do not fit Tq = '
                      f'{q_len}, Tk = {kv_len}')
  return q_ids.astype(jnp.int32), kv_ids.astype(jnp.int32)


def resolve_backend(backend: str | None, interpret: Any) -> str:
  """`backend`, or the one for this machine's accelerator; a ConfigError where none can run.

  An explicit backend is trusted (so the kernels export for a platform this machine lacks).
  """
  if backend is not None:
    check_choice('flash attention backend', backend, BACKENDS)
    return backend
  platform = jax.default_backend()
  if platform == 'tpu':
    return 'tpu'
  if platform == 'gpu' or interpret:
    return 'triton'
  raise ConfigError(f'flash attention needs a GPU or TPU, but the backend is {platform}; '
                    'interpret=True runs it in the Pallas interpreter (slow: for tests)')


def _check(q, k, v) -> None:
  if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or k.shape[0] != q.shape[0] \
      or q.shape[2] % k.shape[2] or q.shape[3] != k.shape[3]:
    raise ConfigError(f'flash attention shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit: '
                      'need q [B, Tq, H, D] and k = v [B, Tk, K, D] with H a multiple of K')
  if not q.dtype == k.dtype == v.dtype or q.dtype not in DTYPES:
    raise ConfigError(f'flash attention dtypes {q.dtype}, {k.dtype}, {v.dtype}: need one of '
                      'bfloat16, float16, float32 for all three')
  if q.shape[3] > MAX_HEAD_DIM:
    raise ConfigError(f'flash attention head dim {q.shape[3]} > {MAX_HEAD_DIM}')


def _pad(x, axis: int, size: int, value=0):
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                    segment_ids: Any = None, kv_valid: jax.Array | None = None,
                    scale: float | None = None, block_q: int | None = None,
                    block_k: int | None = None, backend: str | None = None,
                    interpret: Any = False) -> jax.Array:
  """softmax(scale * q k^T, masked) v by the Pallas flash-attention kernels; differentiable.

  q [B, Tq, H, D], k / v [B, Tk, K, D] (H % K == 0), bfloat16 / float16 / float32, D <= 256, any
  lengths (padded to the block inside). Returns [B, Tq, H, D] in q's dtype.
  causal: key j is visible to query i iff j <= i.
  segment_ids: int [B, T] (self-attention) or a pair ([B, Tq], [B, Tk]): queries see only keys of
    their own segment (packed sequences). Ids must not be int32's minimum (it marks padding).
  kv_valid: bool [B, Tk], False for padding keys (`models.attention.make_mask`'s kv_valid).
  scale: default D ** -0.5. block_q / block_k: override `block_sizes` (forward and backward).
  backend: 'triton' | 'tpu'; None picks this machine's (CPU: 'triton', with interpret only).
  interpret: True (or `pltpu.InterpretParams()`, TPU style) runs the kernels in the interpreter.
  A query whose keys are all masked gets an undefined (finite) output.
  """
  _check(q, k, v)
  backend = resolve_backend(backend, interpret)
  b, tq, _, d = q.shape
  tk = k.shape[1]
  scale = d ** -0.5 if scale is None else float(scale)
  q_ids, kv_ids = _split_segment_ids(segment_ids, tq, tk)
  if kv_valid is not None:
    if kv_valid.shape != (b, tk):
      raise ConfigError(f'kv_valid of shape {kv_valid.shape} does not fit [B, Tk] = {(b, tk)}')
    q_ids = jnp.zeros((b, tq), jnp.int32) if q_ids is None else q_ids
    kv_ids = jnp.zeros((b, tk), jnp.int32) if kv_ids is None else kv_ids
    kv_ids = jnp.where(kv_valid.astype(bool), kv_ids, _flash_math.PAD_ID)

  # Triton tiles need power-of-two sides: zero columns change no score and no output column.
  d_pad = max(16, 1 << (d - 1).bit_length()) if backend == 'triton' else d
  blocks = block_sizes(backend, q.dtype, d_pad, tq, tk, block_q=block_q, block_k=block_k)
  tq_pad = -(-tq // max(blocks.block_q, blocks.block_q_bwd)) * max(blocks.block_q,
                                                                   blocks.block_q_bwd)
  tk_pad = -(-tk // max(blocks.block_k, blocks.block_k_bwd)) * max(blocks.block_k,
                                                                   blocks.block_k_bwd)
  # Padded keys need masking unless segment ids mark them, or causality hides them from every
  # real query (then only padded queries, whose rows are dropped, can see them).
  hidden = q_ids is not None or (causal and tq <= tk)
  plan = Plan(backend, causal, scale, None if tk_pad == tk or hidden else tk,
              **dataclasses.asdict(blocks), interpret=interpret)
  q = _pad(_pad(q, 1, tq_pad), 3, d_pad)
  k, v = (_pad(_pad(x, 1, tk_pad), 3, d_pad) for x in (k, v))
  if q_ids is not None:
    q_ids = _pad(q_ids, 1, tq_pad)[:, :, None]  # [B, Tq, 1]
    kv_ids = _pad(kv_ids, 1, tk_pad, _flash_math.PAD_ID)[:, None, :]  # [B, 1, Tk]
  out = _flash(q, k, v, q_ids, kv_ids, plan)
  return out[:, :tq, :, :d]


def supports(head_dim: int, dtype) -> bool:
  """Whether `flash_attention` takes this head dim and dtype (for `attention_impl=auto`)."""
  return head_dim <= MAX_HEAD_DIM and jnp.dtype(dtype) in [jnp.dtype(t) for t in DTYPES]
