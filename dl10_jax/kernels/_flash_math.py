"""The block math both flash-attention kernels share (Triton: _flash_triton.py, TPU: _flash_tpu.py).

Each kernel only decides how blocks of queries and keys reach it (a loop over key blocks inside a
Triton program, a grid axis with VMEM scratch on a TPU); what happens to one [bq, bk] block is
written once, here, so the two variants cannot drift apart numerically.

All arrays are 2-D tiles: q [bq, D], k / v [bk, D], per-row statistics [bq, 1] (both backends keep
them 2-D, which Mosaic TPU needs and Triton accepts), positions and segment ids broadcastable to
[bq, bk]. Accumulators and statistics are float32 whatever the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The score of a masked key: finite, so a block whose keys are all masked yields no NaN (its
# weights are wiped by the first visible key, whose larger maximum rescales them to 0).
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
PAD_ID = int(np.iinfo(np.int32).min)  # Segment id of a padding key: equals no query's id.


def _precision(dtype) -> lax.Precision | None:
  """fp32 inputs get true fp32 matmuls (not TF32 / one bf16 pass); 16-bit ones the native path."""
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def matmul(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
  """a, b 2-D -> float32 product contracting a's axis contract[0] with b's contract[1]."""
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                         precision=_precision(a.dtype), preferred_element_type=jnp.float32)


def block_mask(q_pos: jax.Array, k_pos: jax.Array, *, causal: bool, kv_len: int | None,
               q_ids: jax.Array | None, kv_ids: jax.Array | None) -> jax.Array | None:
  """Boolean mask of one block (True: the query sees the key), or None when nothing is masked.

  q_pos / k_pos: absolute positions, broadcastable to [bq, bk]. causal: key position <= query
  position (top-left aligned, as `models.attention.make_mask`). kv_len: the real key length when
  the keys were padded to a block multiple and no segment id marks the padding.
  """
  mask = None

  def combine(m):
    return m if mask is None else jnp.logical_and(mask, m)

  if causal:
    mask = combine(k_pos <= q_pos)
  if kv_len is not None:
    mask = combine(k_pos < kv_len)
  if q_ids is not None:
    mask = combine(q_ids == kv_ids)
  return mask


def scores(q: jax.Array, k: jax.Array, scale: float, mask: jax.Array | None) -> jax.Array:
  """q [bq, D], k [bk, D] -> float32 scale * q k^T [bq, bk], masked keys at MASK_VALUE."""
  s = matmul(q, k, (1, 1)) * scale
  return s if mask is None else jnp.where(mask, s, MASK_VALUE)


def init_stats(block_q: int, head_dim: int):
  """Running max m [bq, 1], running sum l [bq, 1] and unnormalised output acc [bq, D]."""
  return (jnp.full((block_q, 1), -jnp.inf, jnp.float32), jnp.zeros((block_q, 1), jnp.float32),
          jnp.zeros((block_q, head_dim), jnp.float32))


def online_softmax_step(s: jax.Array, v: jax.Array, m: jax.Array, l: jax.Array, acc: jax.Array):
  """One key block of the online softmax (Milakov & Gimelshein 2018; FlashAttention-2 alg. 1).

  s [bq, bk] float32 scores, v [bk, D]. The old sum and output are rescaled by exp(m_old - m_new)
  so that after the last block acc / l is the softmax-weighted sum of all values seen.
  """
  m_next = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
  alpha = jnp.exp(m - m_next)
  p = jnp.exp(s - m_next)  # [bq, bk]
  l_next = alpha * l + jnp.sum(p, axis=1, keepdims=True)
  acc_next = alpha * acc + matmul(p.astype(v.dtype), v, (1, 0))
  return m_next, l_next, acc_next


def finish(m: jax.Array, l: jax.Array, acc: jax.Array):
  """-> output [bq, D] float32 and log-sum-exp [bq, 1] (the only residual the backward needs)."""
  return acc / l, m + jnp.log(l)


def probs_and_dscores(s: jax.Array, v: jax.Array, do: jax.Array, lse: jax.Array,
                      delta: jax.Array, scale: float):
  """Backward of one block: the weights p = exp(s - lse) and d(loss)/d(q k^T), both [bq, bk].

  delta [bq, 1] = rowsum(dO * O), so that dS = p * (dO v^T - delta) (FlashAttention-2, eq. in
  sec. 3.1.2); the returned value is already multiplied by `scale` (s = scale * q k^T).
  """
  p = jnp.exp(s - lse)
  dp = matmul(do, v, (1, 1))  # [bq, bk]
  return p, p * (dp - delta) * scale
