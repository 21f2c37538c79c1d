"""The fused LSTM's Pallas kernels: one time-step body, a Triton (GPU) and a Mosaic (TPU) launcher.

Private to `lstm.py`, which pads, picks the blocks and wraps these in a `custom_vjp`. Layout
(already padded; time-major; gates side by side in torch order [i | f | g | o], each Hp wide):

  xw [Tp, Bp, 4Hp]    input projections (any float dtype)     w  [Hp, 4Hp]   recurrent weights
  h0, c0 [Bp, Hp]     initial state, fp32                      wt [4Hp, Hp]   w.T, for the backward
  mask [Tp, Bp, 1]    fp32; 0 keeps the state (padding steps, padded time steps)

Forward writes the states hs [Tp, Bp, Hp], the cell state before each step cps [Tp, Bp, Hp] and
the gate activations acts [Tp, Bp, 4Hp] (all fp32: what the backward needs), and the final cell
cT [Bp, Hp]. Backward runs time in reverse and writes dz [Tp, Bp, 4Hp] (= d xw, fp32), dh0 and dc0;
dW_hh is one matmul over all steps outside (see `lstm.py`).

The grid runs over batch blocks (the only independent axis of a recurrence). The Triton program
runs the whole sequence in one `fori_loop` with h and c in registers; the TPU program gets time
blocks as a second, sequential ("arbitrary") grid axis so that VMEM holds a chunk of the sequence
at a time, with h and c in VMEM scratch across chunks. W (and W.T) have a constant block index, so
the TPU pipeline copies them to VMEM once per kernel; the Triton variant loads them into registers
before the loop when they are small (`resident_weights`) and from L2 in every step otherwise.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

F32 = jnp.float32
TPU_VMEM_LIMIT = 48 * 2**20  # Asked of Mosaic; below v7x's 64 MiB, the smallest VMEM in use.


def _forward_steps(xw_ref, mask_ref, hs_ref, cps_ref, acts_ref, load_w: Callable, w_dtype,
                   h: jax.Array, c: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
  """`steps` LSTM steps over the refs' leading (time) axis from state (h, c) [bB, Hp], fp32."""
  hp = h.shape[-1]

  def step(s, carry):
    h, c = carry
    hw = h.astype(w_dtype)
    z = [xw_ref[s, :, pl.ds(k * hp, hp)].astype(F32)
         + jnp.dot(hw, load_w(k), preferred_element_type=F32) for k in range(4)]  # 4 x [bB, Hp]
    i, f, g, o = jax.nn.sigmoid(z[0]), jax.nn.sigmoid(z[1]), jnp.tanh(z[2]), jax.nn.sigmoid(z[3])
    c_new = f * c + i * g
    h_new = o * jnp.tanh(c_new)
    cps_ref[s] = c
    for k, a in enumerate((i, f, g, o)):
      acts_ref[s, :, pl.ds(k * hp, hp)] = a
    keep = mask_ref[s]  # [bB, 1]
    h = keep * h_new + (1 - keep) * h
    c = keep * c_new + (1 - keep) * c
    hs_ref[s] = h
    return h, c

  return jax.lax.fori_loop(0, steps, step, (h, c))


def _backward_steps(dhs_ref, acts_ref, cps_ref, mask_ref, dz_ref, load_wt: Callable, w_dtype,
                    dh: jax.Array, dc: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
  """`steps` steps of the LSTM's backward, last step first, from the gradients (dh, dc) [bB, Hp]
  w.r.t. the state after the block; returns those w.r.t. the state before it."""
  hp = dh.shape[-1]

  def step(j, carry):
    dh, dc = carry  # W.r.t. the state after step s (dh without this step's output yet).
    s = steps - 1 - j
    i, f, g, o = (acts_ref[s, :, pl.ds(k * hp, hp)] for k in range(4))
    c_prev = cps_ref[s]
    tanh_c = jnp.tanh(f * c_prev + i * g)  # The forward's new cell, recomputed bit for bit.
    keep = mask_ref[s]
    dh = dh + dhs_ref[s]
    dhn, dcn = keep * dh, keep * dc
    dcn = dcn + dhn * o * (1 - tanh_c * tanh_c)
    dz = (dcn * g * i * (1 - i), dcn * c_prev * f * (1 - f), dcn * i * (1 - g * g),
          dhn * tanh_c * o * (1 - o))
    dh_prev = (1 - keep) * dh
    for k in range(4):
      dz_ref[s, :, pl.ds(k * hp, hp)] = dz[k]
      dh_prev = dh_prev + jnp.dot(dz[k].astype(w_dtype), load_wt(k), preferred_element_type=F32)
    return dh_prev, dcn * f + (1 - keep) * dc

  return jax.lax.fori_loop(0, steps, step, (dh, dc))


def _f32(*shape) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, F32)


def _specs(ins, kinds, seq, row, full) -> list:
  """Block specs by kind: an int is a sequence operand's width, 'row' a [Bp, Hp] state, 'full' W."""
  return [full(x) if kind == 'full' else row if kind == 'row' else seq(kind)
          for x, kind in zip(ins, kinds)]


# --- Triton (GPU): grid over batch blocks, the whole sequence per program. ---


def _triton_call(kernel, name, blocks, interpret, tp, hp, ins, in_kinds, out_widths, rows_out):
  """A Triton pallas_call over batch blocks; sequence operands [Tp, bB, width] per program."""
  bb, bp = blocks.batch, ins[0].shape[1]
  seq = lambda width: pl.BlockSpec((tp, bb, width), lambda b: (0, b, 0))
  row = pl.BlockSpec((bb, hp), lambda b: (b, 0))
  full = lambda x: pl.BlockSpec(x.shape, lambda b: (0, 0))
  return pl.pallas_call(
      kernel, name=name, grid=(bp // bb,), interpret=interpret,
      in_specs=_specs(ins, in_kinds, seq, row, full),
      out_specs=[seq(w) for w in out_widths] + [row] * rows_out,
      out_shape=[_f32(tp, bp, w) for w in out_widths] + [_f32(bp, hp)] * rows_out,
      # Explicit: without Triton params, a pallas_call lowers to Mosaic GPU on CUDA.
      compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps,
                                           num_stages=blocks.num_stages),
  )(*ins)


def _triton_weights(w_ref, blocks, rows: bool) -> Callable:
  """Gate k's [Hp, Hp] slice of w (columns) or wt (rows): loaded once if resident, else per step."""
  hp = w_ref.shape[0 if not rows else 1]
  get = ((lambda k: w_ref[pl.ds(k * hp, hp), :]) if rows else
         (lambda k: w_ref[:, pl.ds(k * hp, hp)]))
  if blocks.resident_weights:
    return [get(k) for k in range(4)].__getitem__
  return get


def triton_forward(xw, w, h0, c0, mask, *, blocks, interpret=False):
  tp, _, g = xw.shape
  hp = g // 4

  def kernel(xw_ref, w_ref, h0_ref, c0_ref, mask_ref, hs_ref, cps_ref, acts_ref, ct_ref):
    load_w = _triton_weights(w_ref, blocks, rows=False)
    _, c = _forward_steps(xw_ref, mask_ref, hs_ref, cps_ref, acts_ref, load_w, w.dtype,
                          h0_ref[...], c0_ref[...], tp)
    ct_ref[...] = c

  return _triton_call(kernel, 'lstm_forward', blocks, interpret, tp, hp, (xw, w, h0, c0, mask),
                      (4 * hp, 'full', 'row', 'row', 1), (hp, hp, 4 * hp), 1)


def triton_backward(dhs, dct, acts, cps, mask, wt, *, blocks, interpret=False):
  tp, _, hp = dhs.shape

  def kernel(dhs_ref, dct_ref, acts_ref, cps_ref, mask_ref, wt_ref, dz_ref, dh0_ref, dc0_ref):
    load_wt = _triton_weights(wt_ref, blocks, rows=True)
    dh, dc = _backward_steps(dhs_ref, acts_ref, cps_ref, mask_ref, dz_ref, load_wt, wt.dtype,
                             jnp.zeros(dct_ref.shape, F32), dct_ref[...], tp)
    dh0_ref[...] = dh
    dc0_ref[...] = dc

  return _triton_call(kernel, 'lstm_backward', blocks, interpret, tp, hp,
                      (dhs, dct, acts, cps, mask, wt), (hp, 'row', 4 * hp, hp, 1, 'full'),
                      (4 * hp,), 2)


# --- TPU (Mosaic): grid over (batch blocks, time blocks); h and c in VMEM scratch. ---


def _tpu_call(kernel, name, blocks, interpret, reverse, hp, ins, in_kinds, out_widths, rows_out):
  """A Mosaic pallas_call over (batch, time) blocks; time runs last block first when `reverse`."""
  tp, bp, _ = ins[0].shape
  bb, tt = blocks.batch, blocks.time
  nt = tp // tt
  time = (lambda t: nt - 1 - t) if reverse else (lambda t: t)
  seq = lambda width: pl.BlockSpec((tt, bb, width), lambda b, t: (time(t), b, 0))
  row = pl.BlockSpec((bb, hp), lambda b, t: (b, 0))
  full = lambda x: pl.BlockSpec(x.shape, lambda b, t: (0, 0))
  return pl.pallas_call(
      kernel, name=name, grid=(bp // bb, nt), interpret=interpret,
      in_specs=_specs(ins, in_kinds, seq, row, full),
      out_specs=[seq(w) for w in out_widths] + [row] * rows_out,
      out_shape=[_f32(tp, bp, w) for w in out_widths] + [_f32(bp, hp)] * rows_out,
      scratch_shapes=[pltpu.VMEM((bb, hp), F32), pltpu.VMEM((bb, hp), F32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=('parallel', 'arbitrary'),
                                           vmem_limit_bytes=TPU_VMEM_LIMIT),
  )(*ins)


def tpu_forward(xw, w, h0, c0, mask, *, blocks, interpret=False):
  hp = xw.shape[2] // 4

  def kernel(xw_ref, w_ref, h0_ref, c0_ref, mask_ref, hs_ref, cps_ref, acts_ref, ct_ref, h_scr,
             c_scr):
    @pl.when(pl.program_id(1) == 0)
    def _():
      h_scr[...] = h0_ref[...]
      c_scr[...] = c0_ref[...]

    load_w = lambda k: w_ref[:, pl.ds(k * hp, hp)]  # From VMEM, where it stays for the kernel.
    h, c = _forward_steps(xw_ref, mask_ref, hs_ref, cps_ref, acts_ref, load_w, w.dtype,
                          h_scr[...], c_scr[...], blocks.time)
    h_scr[...] = h
    c_scr[...] = c
    ct_ref[...] = c

  return _tpu_call(kernel, 'lstm_forward', blocks, interpret, False, hp, (xw, w, h0, c0, mask),
                   (4 * hp, 'full', 'row', 'row', 1), (hp, hp, 4 * hp), 1)


def tpu_backward(dhs, dct, acts, cps, mask, wt, *, blocks, interpret=False):
  hp = dhs.shape[2]

  def kernel(dhs_ref, dct_ref, acts_ref, cps_ref, mask_ref, wt_ref, dz_ref, dh0_ref, dc0_ref,
             dh_scr, dc_scr):
    @pl.when(pl.program_id(1) == 0)
    def _():
      dh_scr[...] = jnp.zeros(dh_scr.shape, F32)
      dc_scr[...] = dct_ref[...]

    load_wt = lambda k: wt_ref[pl.ds(k * hp, hp), :]
    dh, dc = _backward_steps(dhs_ref, acts_ref, cps_ref, mask_ref, dz_ref, load_wt, wt.dtype,
                             dh_scr[...], dc_scr[...], blocks.time)
    dh_scr[...] = dh
    dc_scr[...] = dc
    dh0_ref[...] = dh
    dc0_ref[...] = dc

  return _tpu_call(kernel, 'lstm_backward', blocks, interpret, True, hp,
                   (dhs, dct, acts, cps, mask, wt), (hp, 'row', 4 * hp, hp, 1, 'full'),
                   (4 * hp,), 2)


FORWARD = {'triton': triton_forward, 'tpu': tpu_forward}
BACKWARD = {'triton': triton_backward, 'tpu': tpu_backward}
