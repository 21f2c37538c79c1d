"""Flash attention for GPUs through Pallas' Triton backend: forward, dK/dV and dQ kernels.

One Triton program per (query block, batch, head) keeps its query tile in registers and loops over
key blocks with `lax.fori_loop`; under `causal` the loop stops at the diagonal (the blocks above it
are never loaded). The backward pass is two kernels, as in FlashAttention-2: one program per key
block accumulates dK and dV over the query blocks at or below the diagonal, one program per query
block accumulates dQ. No atomics: grouped-query heads write dK / dV per query head, summed outside.

Arrays arrive padded by `flash_attention.py`: [B, T, H, D] with T a multiple of every block and D
a power of two (Triton tiles must have power-of-two sides); statistics are [B, H, T, 1] float32,
segment ids [B, Tq, 1] / [B, 1, Tk] int32. Compiler params are passed explicitly: a `pallas_call`
without them lowers to Mosaic GPU on CUDA in jax 0.10.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from dl10_jax.kernels import _flash_math as fm


def _positions(start, size: int, axis: int) -> jax.Array:
  """Absolute positions start..start+size-1 as [size, 1] (axis 0) or [1, size] (axis 1)."""
  pos = start + jnp.arange(size, dtype=jnp.int32)
  return pos[:, None] if axis == 0 else pos[None, :]


def _compiler_params(block_q: int, block_k: int, head_dim: int) -> pltriton.CompilerParams:
  """4 warps for small tiles, 8 once a tile pair or the head dim is large (jax's mha heuristic)."""
  warps = 4 if head_dim <= 64 and block_q * block_k <= 128 * 128 else 8
  return pltriton.CompilerParams(num_warps=warps, num_stages=2)


def _unpack(refs, has_ids: bool, n_in: int):
  """Kernel refs -> (inputs, q_ids_ref, kv_ids_ref, outputs); ids sit after the n_in inputs."""
  ins = refs[:n_in]
  if has_ids:
    return ins, refs[n_in], refs[n_in + 1], refs[n_in + 2:]
  return ins, None, None, refs[n_in:]


# --- Forward. ---

def _fwd_kernel(*refs, plan, has_ids: bool, kv_blocks: int):
  (q_ref, k_ref, v_ref), qid_ref, kid_ref, (o_ref, lse_ref) = _unpack(refs, has_ids, 3)
  bq, bk = plan.block_q, plan.block_k
  i = pl.program_id(0)
  q = q_ref[...]  # [bq, D]
  q_pos = _positions(i * bq, bq, 0)
  q_ids = qid_ref[...] if has_ids else None  # [bq, 1]

  def body(j, carry):
    start = pl.multiple_of(j * bk, bk)
    keys = pl.ds(start, bk)
    mask = fm.block_mask(q_pos, _positions(start, bk, 1), causal=plan.causal, kv_len=plan.kv_len,
                         q_ids=q_ids, kv_ids=kid_ref[:, keys] if has_ids else None)
    return fm.online_softmax_step(fm.scores(q, k_ref[keys, :], plan.scale, mask),
                                  v_ref[keys, :], *carry)

  stop = kv_blocks
  if plan.causal:  # The last key block holding a key at or before this block's last query.
    stop = jnp.minimum(kv_blocks, lax.div((i + 1) * bq + bk - 1, bk))
  out, lse = fm.finish(*lax.fori_loop(0, stop, body, fm.init_stats(bq, q.shape[-1])))
  o_ref[...] = out.astype(o_ref.dtype)
  lse_ref[...] = lse


def forward(q, k, v, q_ids, kv_ids, plan):
  """q [B, Tq, H, D], k / v [B, Tk, K, D] -> output [B, Tq, H, D], log-sum-exp [B, H, Tq, 1]."""
  b, tq, h, d = q.shape
  tk, groups = k.shape[1], h // k.shape[2]
  bq = plan.block_q
  has_ids = q_ids is not None
  # Grid (query block i, batch n, head m); the whole key sequence of (n, m) is addressable.
  in_specs = [pl.BlockSpec((None, bq, None, d), lambda i, n, m: (n, i, m, 0)),
              pl.BlockSpec((None, tk, None, d), lambda i, n, m: (n, 0, lax.div(m, groups), 0)),
              pl.BlockSpec((None, tk, None, d), lambda i, n, m: (n, 0, lax.div(m, groups), 0))]
  args = [q, k, v]
  if has_ids:
    in_specs += [pl.BlockSpec((None, bq, 1), lambda i, n, m: (n, i, 0)),
                 pl.BlockSpec((None, 1, tk), lambda i, n, m: (n, 0, 0))]
    args += [q_ids, kv_ids]
  kernel = functools.partial(_fwd_kernel, plan=plan, has_ids=has_ids,
                             kv_blocks=tk // plan.block_k)
  return pl.pallas_call(
      kernel, grid=(tq // bq, b, h), in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bq, None, d), lambda i, n, m: (n, i, m, 0)),
                 pl.BlockSpec((None, None, bq, 1), lambda i, n, m: (n, m, i, 0))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, tq, 1), jnp.float32)],
      compiler_params=_compiler_params(bq, plan.block_k, d), interpret=plan.interpret,
      name='flash_attention_fwd')(*args)


# --- Backward. ---

def _dkv_kernel(*refs, plan, has_ids: bool, q_blocks: int):
  ins, qid_ref, kid_ref, (dk_ref, dv_ref) = _unpack(refs, has_ids, 6)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  bq, bk = plan.block_q_bwd, plan.block_k_bwd
  j = pl.program_id(0)
  k, v = k_ref[...], v_ref[...]  # [bk, D]
  k_pos = _positions(j * bk, bk, 1)
  kv_ids = kid_ref[...] if has_ids else None  # [1, bk]

  def body(i, carry):
    dk, dv = carry
    start = pl.multiple_of(i * bq, bq)
    rows = pl.ds(start, bq)
    q, do = q_ref[rows, :], do_ref[rows, :]
    mask = fm.block_mask(_positions(start, bq, 0), k_pos, causal=plan.causal, kv_len=plan.kv_len,
                         q_ids=qid_ref[rows, :] if has_ids else None, kv_ids=kv_ids)
    p, ds = fm.probs_and_dscores(fm.scores(q, k, plan.scale, mask), v, do, lse_ref[rows, :],
                                 delta_ref[rows, :], plan.scale)
    return (dk + fm.matmul(ds.astype(q.dtype), q, (0, 0)),
            dv + fm.matmul(p.astype(do.dtype), do, (0, 0)))

  start = lax.div(j * bk, bq) if plan.causal else 0  # Query blocks above the diagonal: skipped.
  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(start, q_blocks, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, plan, has_ids: bool, kv_blocks: int):
  ins, qid_ref, kid_ref, (dq_ref,) = _unpack(refs, has_ids, 6)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  bq, bk = plan.block_q_bwd, plan.block_k_bwd
  i = pl.program_id(0)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_pos = _positions(i * bq, bq, 0)
  q_ids = qid_ref[...] if has_ids else None

  def body(j, dq):
    start = pl.multiple_of(j * bk, bk)
    keys = pl.ds(start, bk)
    k = k_ref[keys, :]
    mask = fm.block_mask(q_pos, _positions(start, bk, 1), causal=plan.causal, kv_len=plan.kv_len,
                         q_ids=q_ids, kv_ids=kid_ref[:, keys] if has_ids else None)
    _, ds = fm.probs_and_dscores(fm.scores(q, k, plan.scale, mask), v_ref[keys, :], do, lse,
                                 delta, plan.scale)
    return dq + fm.matmul(ds.astype(k.dtype), k, (1, 0))

  stop = kv_blocks
  if plan.causal:
    stop = jnp.minimum(kv_blocks, lax.div((i + 1) * bq + bk - 1, bk))
  dq = lax.fori_loop(0, stop, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def backward(q, k, v, q_ids, kv_ids, do, lse, delta, plan):
  """-> dq [B, Tq, H, D], dk / dv per query head [B, Tk, H, D] (float32 when heads are grouped)."""
  b, tq, h, d = q.shape
  tk, groups = k.shape[1], h // k.shape[2]
  bq, bk = plan.block_q_bwd, plan.block_k_bwd
  has_ids = q_ids is not None
  params = _compiler_params(bq, bk, d)
  args = [q, k, v, do, lse, delta] + ([q_ids, kv_ids] if has_ids else [])
  kv_dtype = k.dtype if groups == 1 else jnp.float32

  # dK / dV: grid (key block, batch, head); all queries of the (batch, head) are visible.
  full_q = pl.BlockSpec((None, tq, None, d), lambda j, n, m: (n, 0, m, 0))
  block_kv = pl.BlockSpec((None, bk, None, d), lambda j, n, m: (n, j, lax.div(m, groups), 0))
  full_stat = pl.BlockSpec((None, None, tq, 1), lambda j, n, m: (n, m, 0, 0))
  in_specs = [full_q, block_kv, block_kv, full_q, full_stat, full_stat]
  if has_ids:
    in_specs += [pl.BlockSpec((None, tq, 1), lambda j, n, m: (n, 0, 0)),
                 pl.BlockSpec((None, 1, bk), lambda j, n, m: (n, 0, j))]
  out_kv = pl.BlockSpec((None, bk, None, d), lambda j, n, m: (n, j, m, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, plan=plan, has_ids=has_ids, q_blocks=tq // bq),
      grid=(tk // bk, b, h), in_specs=in_specs, out_specs=[out_kv, out_kv],
      out_shape=[jax.ShapeDtypeStruct((b, tk, h, d), kv_dtype)] * 2,
      compiler_params=params, interpret=plan.interpret, name='flash_attention_dkv')(*args)

  # dQ: grid (query block, batch, head); all keys visible.
  block_q = pl.BlockSpec((None, bq, None, d), lambda i, n, m: (n, i, m, 0))
  full_kv = pl.BlockSpec((None, tk, None, d), lambda i, n, m: (n, 0, lax.div(m, groups), 0))
  block_stat = pl.BlockSpec((None, None, bq, 1), lambda i, n, m: (n, m, i, 0))
  in_specs = [block_q, full_kv, full_kv, block_q, block_stat, block_stat]
  if has_ids:
    in_specs += [pl.BlockSpec((None, bq, 1), lambda i, n, m: (n, i, 0)),
                 pl.BlockSpec((None, 1, tk), lambda i, n, m: (n, 0, 0))]
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, plan=plan, has_ids=has_ids, kv_blocks=tk // bk),
      grid=(tq // bq, b, h), in_specs=in_specs, out_specs=block_q,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params, interpret=plan.interpret, name='flash_attention_dq')(*args)
  return dq, dk, dv
