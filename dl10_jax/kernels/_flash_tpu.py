"""Flash attention for TPUs through Pallas' Mosaic backend: forward, dK/dV and dQ kernels.

A TPU core runs one grid step at a time and pipelines the HBM -> VMEM copies of the next step's
blocks behind the current one, so the key loop is the innermost grid axis ('arbitrary': sequential)
and the running statistics live in VMEM scratch between its steps, instead of the Triton variant's
in-kernel loop. Under `causal` the steps above the diagonal run no compute (`pl.when`) and their
index maps repeat the last useful block, so the pipeline issues no copy for them either.

Mosaic tiles the last two dims of every block by (8, 128): blocks are [bq, D] and [bk, D] of a
[B, H, T, D] layout (heads moved in front here, since a [B, T, H, D] block of one head would end
in a (1, D) tile), statistics [B, H, T, 1], segment ids [B, Tq, 1] and [B, 1, Tk]; `bk` a multiple
of 128 (the lane axis of the score tile), `bq` of 8. `flash_attention.block_sizes` keeps to that.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from dl10_jax.kernels import _flash_math as fm

_SEMANTICS = pltpu.CompilerParams(
    dimension_semantics=('parallel', 'parallel', 'parallel', 'arbitrary'))


def _block_mask(plan, q_start, k_start, bq: int, bk: int, qid_ref, kid_ref):
  """The mask of the block at (q_start, k_start); positions as 2-D iotas (Mosaic has no 1-D)."""
  q_pos = q_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
  k_pos = k_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
  return fm.block_mask(q_pos, k_pos, causal=plan.causal, kv_len=plan.kv_len,
                       q_ids=None if qid_ref is None else qid_ref[...],
                       kv_ids=None if kid_ref is None else kid_ref[...])


def _visible(plan, q_block, k_block, bq: int, bk: int):
  """Whether block (q_block, k_block) has a key at or before a query (always, unless causal)."""
  return True if not plan.causal else k_block * bk <= q_block * bq + bq - 1


def _when(cond, fn):
  """Runs fn under pl.when unless cond is the Python True (no branch at all then)."""
  if cond is True:
    fn()
  else:
    pl.when(cond)(fn)


def _specs(plan, b_q: int, b_k: int, d: int, groups: int, has_ids: bool, kv_major: bool):
  """Block specs of q, k, v, do, lse, delta (and ids) for a grid (B, H, outer, inner).

  kv_major False: outer = query block, inner = key block (forward, dQ); True: the reverse (dK/dV).
  The inner index of a skipped (causal) step is clamped to the last visible block.
  """
  def blocks(outer, inner):  # -> (query block, key block) read at this grid step.
    i, j = (inner, outer) if kv_major else (outer, inner)
    if plan.causal and kv_major:  # First query block that sees key block j.
      i = jnp.maximum(i, lax.div(j * b_k, b_q))
    elif plan.causal:  # Last key block that query block i sees.
      j = jnp.minimum(j, lax.div(i * b_q + b_q - 1, b_k))
    return i, j

  def q_map(b, h, outer, inner):
    return b, h, blocks(outer, inner)[0], 0

  def kv_map(b, h, outer, inner):
    return b, lax.div(h, groups), blocks(outer, inner)[1], 0

  q_spec = pl.BlockSpec((None, None, b_q, d), q_map)
  kv_spec = pl.BlockSpec((None, None, b_k, d), kv_map)
  stat_spec = pl.BlockSpec((None, None, b_q, 1), q_map)
  specs = [q_spec, kv_spec, kv_spec, q_spec, stat_spec, stat_spec]
  if has_ids:
    specs += [pl.BlockSpec((None, b_q, 1), lambda b, h, o, i: (b, blocks(o, i)[0], 0)),
              pl.BlockSpec((None, 1, b_k), lambda b, h, o, i: (b, 0, blocks(o, i)[1]))]
  return specs


def _heads_first(x):
  return None if x is None else jnp.swapaxes(x, 1, 2)  # [B, T, H, D] <-> [B, H, T, D]


# --- Forward. ---

def _fwd_kernel(*refs, plan, has_ids: bool, kv_blocks: int):
  q_ref, k_ref, v_ref = refs[:3]
  qid_ref, kid_ref = refs[3:5] if has_ids else (None, None)
  o_ref, lse_ref, m_ref, l_ref, acc_ref = refs[5 if has_ids else 3:]
  bq, bk = plan.block_q, plan.block_k
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    m_ref[...], l_ref[...], acc_ref[...] = fm.init_stats(bq, acc_ref.shape[-1])

  def step():
    mask = _block_mask(plan, i * bq, j * bk, bq, bk, qid_ref, kid_ref)
    s = fm.scores(q_ref[...], k_ref[...], plan.scale, mask)
    m_ref[...], l_ref[...], acc_ref[...] = fm.online_softmax_step(
        s, v_ref[...], m_ref[...], l_ref[...], acc_ref[...])

  _when(_visible(plan, i, j, bq, bk), step)

  @pl.when(j == kv_blocks - 1)
  def _finish():
    out, lse = fm.finish(m_ref[...], l_ref[...], acc_ref[...])
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse


def forward(q, k, v, q_ids, kv_ids, plan):
  """q [B, Tq, H, D], k / v [B, Tk, K, D] -> output [B, Tq, H, D], log-sum-exp [B, H, Tq, 1]."""
  b, tq, h, d = q.shape
  tk, groups = k.shape[1], h // k.shape[2]
  bq, bk = plan.block_q, plan.block_k
  has_ids = q_ids is not None
  specs = _specs(plan, bq, bk, d, groups, has_ids, kv_major=False)
  args = [_heads_first(x) for x in (q, k, v)] + ([q_ids, kv_ids] if has_ids else [])
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, plan=plan, has_ids=has_ids, kv_blocks=tk // bk),
      grid=(b, h, tq // bq, tk // bk), in_specs=specs[:3] + specs[6:],
      out_specs=[specs[0], specs[4]],
      out_shape=[jax.ShapeDtypeStruct((b, h, tq, d), q.dtype),
                 jax.ShapeDtypeStruct((b, h, tq, 1), jnp.float32)],
      scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                      pltpu.VMEM((bq, d), jnp.float32)],
      compiler_params=_SEMANTICS, interpret=plan.interpret, name='flash_attention_fwd')(*args)
  return _heads_first(out), lse


# --- Backward. ---

def _dkv_kernel(*refs, plan, has_ids: bool, q_blocks: int):
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = refs[:6]
  qid_ref, kid_ref = refs[6:8] if has_ids else (None, None)
  dk_ref, dv_ref, dk_acc, dv_acc = refs[8 if has_ids else 6:]
  bq, bk = plan.block_q_bwd, plan.block_k_bwd
  j, i = pl.program_id(2), pl.program_id(3)

  @pl.when(i == 0)
  def _init():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  def step():
    q, do = q_ref[...], do_ref[...]
    mask = _block_mask(plan, i * bq, j * bk, bq, bk, qid_ref, kid_ref)
    p, ds = fm.probs_and_dscores(fm.scores(q, k_ref[...], plan.scale, mask), v_ref[...], do,
                                 lse_ref[...], delta_ref[...], plan.scale)
    dk_acc[...] += fm.matmul(ds.astype(q.dtype), q, (0, 0))
    dv_acc[...] += fm.matmul(p.astype(do.dtype), do, (0, 0))

  _when(_visible(plan, i, j, bq, bk), step)

  @pl.when(i == q_blocks - 1)
  def _finish():
    dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, plan, has_ids: bool, kv_blocks: int):
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = refs[:6]
  qid_ref, kid_ref = refs[6:8] if has_ids else (None, None)
  dq_ref, dq_acc = refs[8 if has_ids else 6:]
  bq, bk = plan.block_q_bwd, plan.block_k_bwd
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

  def step():
    k = k_ref[...]
    mask = _block_mask(plan, i * bq, j * bk, bq, bk, qid_ref, kid_ref)
    _, ds = fm.probs_and_dscores(fm.scores(q_ref[...], k, plan.scale, mask), v_ref[...],
                                 do_ref[...], lse_ref[...], delta_ref[...], plan.scale)
    dq_acc[...] += fm.matmul(ds.astype(k.dtype), k, (1, 0))

  _when(_visible(plan, i, j, bq, bk), step)

  @pl.when(j == kv_blocks - 1)
  def _finish():
    dq_ref[...] = dq_acc[...].astype(dq_ref.dtype)


def backward(q, k, v, q_ids, kv_ids, do, lse, delta, plan):
  """-> dq [B, Tq, H, D], dk / dv per query head [B, Tk, H, D] (float32 when heads are grouped)."""
  b, tq, h, d = q.shape
  tk, groups = k.shape[1], h // k.shape[2]
  bq, bk = plan.block_q_bwd, plan.block_k_bwd
  has_ids = q_ids is not None
  args = [_heads_first(x) for x in (q, k, v, do)] + [lse, delta]
  args += [q_ids, kv_ids] if has_ids else []
  kv_dtype = k.dtype if groups == 1 else jnp.float32

  specs = _specs(plan, bq, bk, d, groups, has_ids, kv_major=True)
  out_kv = pl.BlockSpec((None, None, bk, d), lambda b, h, j, i: (b, h, j, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, plan=plan, has_ids=has_ids, q_blocks=tq // bq),
      grid=(b, h, tk // bk, tq // bq), in_specs=specs, out_specs=[out_kv, out_kv],
      out_shape=[jax.ShapeDtypeStruct((b, h, tk, d), kv_dtype)] * 2,
      scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32)] * 2,
      compiler_params=_SEMANTICS, interpret=plan.interpret, name='flash_attention_dkv')(*args)

  specs = _specs(plan, bq, bk, d, groups, has_ids, kv_major=False)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, plan=plan, has_ids=has_ids, kv_blocks=tk // bk),
      grid=(b, h, tq // bq, tk // bk), in_specs=specs, out_specs=specs[0],
      out_shape=jax.ShapeDtypeStruct((b, h, tq, d), q.dtype),
      scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
      compiler_params=_SEMANTICS, interpret=plan.interpret, name='flash_attention_dq')(*args)
  return _heads_first(dq), _heads_first(dk), _heads_first(dv)
