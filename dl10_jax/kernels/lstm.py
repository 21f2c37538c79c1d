"""A fused LSTM recurrence in Pallas (Triton on GPUs, Mosaic on TPUs) beside its JAX reference.

What is fused is the recurrence only: the input projection of all steps stays one big matmul
outside (the caller's `xw`), and the kernel runs the whole time loop on chip, a batch block per
program, with h and c in fp32 and W_hh read from HBM once instead of once per step as a `lax.scan`
does. Semantics are those of `dl10_jax.models.recurrent.recurrence` for the LSTM (torch gate order
i, f, g, o; a mask freezes the state and zeroes the output; time reversal is the caller's flip):

  [i, f, g, o] = xw_t + h_{t-1} @ W_hh,   c_t = σ(f) c_{t-1} + σ(i) tanh(g),   h_t = σ(o) tanh(c_t)

Gradients come from a backward kernel running time in reverse (`jax.custom_vjp`): it writes
d xw = dz (per step, the gates' pre-activation gradients), dh0 and dc0, and dW_hh = Σ h_{t-1}ᵀ dz_t
is then one [H, T·B] x [T·B, 4H] matmul outside, not per-block partial sums inside: dz has to be
written anyway (it is d xw), one large matmul runs at full tensor-core/MXU rate where T small
K = bB ones would not, and an [H, 4H] fp32 accumulator does not fit a GPU program's registers.
There is no separate bias: it belongs to the input projection, whose gradient is autodiff's.

Sizes: shapes are padded to the blocks (hidden per gate to a power of two >= 16 for Triton, to a
multiple of 128 lanes for TPU; batch to the batch block; time to the TPU time block, padded steps
masked), so any B, T and H run. What does not run is a W_hh too large for the chip
(`unsupported_reason`): then `lstm_impl=auto` uses the scan and `pallas` says so in one line.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.kernels import _lstm_kernels

BACKENDS = ('triton', 'tpu')
F32 = jnp.float32
TPU_VMEM_BUDGET = 32 * 2**20  # Of the blocks' buffers; the rest of the 48 MiB limit is Mosaic's.
TRITON_RESIDENT_BYTES = 64 * 2**10  # W_hh up to this stays in registers across the time loop.
# Otherwise each step stages a gate's [Hp, Hp] W_hh slice and the [bB, Hp] h tile through shared
# memory, which must fit one program's share (Hopper's and, with this bound, an A100's too); past
# it the kernel does not compile, so `unsupported_reason` refuses it in one line instead
# (experiments/kernels/README.md has the sizes that failed).
TRITON_SHARED_BYTES = 160 * 2**10
# The widest (padded) hidden at which `lstm_impl=auto` takes the Triton kernel: wider, the
# latency-bound step loses to the scan (experiments/kernels/README.md, "LSTM layer").
TRITON_AUTO_MAX_HIDDEN = 128


@dataclasses.dataclass(frozen=True)
class LstmBlocks:
  """How the kernels tile the work (`choose_blocks` picks them; `model.lstm_blocks` overrides).

  batch: batch rows per program (grid axis 0). time: TPU steps per time block (grid axis 1, run in
  order; 0 for Triton, whose programs run the whole sequence). num_warps / num_stages: Triton's.
  resident_weights: Triton loads W_hh into registers before the time loop (else from L2 each step).
  """
  batch: int
  time: int = 0
  num_warps: int = 4
  num_stages: int = 1
  resident_weights: bool = True


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def padded_hidden(backend: str, hidden: int) -> int:
  """The per-gate width the kernels compute with: Triton tiles are powers of two of at least 16
  (its dot's minimum); TPU gates start on 128-lane boundaries."""
  return max(16, _pow2(hidden)) if backend == 'triton' else _round_up(hidden, 128)


def tpu_vmem_bytes(blocks: LstmBlocks, hidden: int, x_dtype, w_dtype) -> int:
  """VMEM the TPU blocks take (the larger of forward and backward; every block double-buffered)."""
  hp, bb, tt = padded_hidden('tpu', hidden), blocks.batch, blocks.time
  xb, wb = jnp.dtype(x_dtype).itemsize, jnp.dtype(w_dtype).itemsize
  state, seq = bb * hp * 4, tt * bb * hp * 4  # An fp32 [bB, Hp] row block; a [tT, bB, Hp] one.
  mask = tt * bb * 128 * 4  # [tT, bB, 1] fp32, lane-padded to 128.
  weights = 4 * hp * hp * wb
  forward = 2 * (seq * xb + weights + 2 * state + mask + 2 * seq + 4 * seq + state)
  backward = 2 * (seq + state + 4 * seq + seq + mask + weights + 4 * seq + 2 * state)
  return max(forward, backward) + 2 * state  # + the h/c scratch.


def choose_blocks(backend: str, batch: int, time: int, hidden: int, x_dtype=F32,
                  w_dtype=None) -> LstmBlocks:
  """The block sizes for this backend, dtype and shape; documented choices, not a tuned table.

  TPU: batch blocks of up to 256 rows (MXU rows per step; a multiple of 8 sublanes, 16 for 16-bit
  inputs), time blocks of up to 32 steps (amortizing the ~0.35 µs per grid step), shrinking time to
  8, then batch, then time again until the buffers fit `TPU_VMEM_BUDGET`. Triton: batch blocks of
  16 rows, 8 warps from Hp = 128: the step is latency-bound, so more programs beat bigger tiles
  (the block sweep in experiments/kernels/README.md).
  """
  check_backend(backend)
  w_dtype = x_dtype if w_dtype is None else w_dtype
  hp = padded_hidden(backend, hidden)
  if backend == 'triton':
    return LstmBlocks(batch=16, num_warps=4 if hp <= 64 else 8, num_stages=1,
                      resident_weights=4 * hp * hp * jnp.dtype(w_dtype).itemsize
                      <= TRITON_RESIDENT_BYTES)
  sub = 16 if jnp.dtype(x_dtype).itemsize == 2 else 8
  first_batch, first_time = min(_round_up(batch, sub), 256), min(time, 32)
  batches = [first_batch] + [bb for bb in (128, 64, 32, 16, 8)
                             if bb % sub == 0 and bb < first_batch]
  times = [first_time] + [tt for tt in (16, 8) if tt < first_time]
  candidates = [(bb, tt) for bb in batches for tt in times]
  candidates += [(sub, tt) for tt in (4, 2, 1) if tt < time]
  for bb, tt in candidates:
    nt = -(-time // tt)  # Even blocks: T = 33 gets two blocks of 17, not 32 + 31 padded steps.
    blocks = LstmBlocks(batch=bb, time=-(-time // nt))
    if tpu_vmem_bytes(blocks, hidden, x_dtype, w_dtype) <= TPU_VMEM_BUDGET:
      return blocks
  return blocks


def override_blocks(blocks: LstmBlocks, override: tuple[int, ...]) -> LstmBlocks:
  """`model.lstm_blocks = (batch,)` or `(batch, time)` over the heuristic's choice; () keeps it."""
  if not override:
    return blocks
  if len(override) > 2 or any(int(n) < 1 for n in override):
    raise ConfigError(f'model.lstm_blocks={tuple(override)} must be (batch,) or (batch, time) '
                      'with positive sizes, or () for the heuristic')
  time = int(override[1]) if len(override) > 1 and blocks.time else blocks.time
  return dataclasses.replace(blocks, batch=int(override[0]), time=time)


def check_backend(backend: str) -> None:
  check_choice('LSTM kernel backend', backend, BACKENDS)


def unsupported_reason(backend: str, blocks: LstmBlocks, hidden: int, x_dtype=F32,
                       w_dtype=None) -> str | None:
  """Why these blocks cannot run this LSTM on `backend` (one line), or None if they can."""
  check_backend(backend)
  w_dtype = x_dtype if w_dtype is None else w_dtype
  hp = padded_hidden(backend, hidden)
  if backend == 'triton':
    if blocks.batch < 16 or blocks.batch != _pow2(blocks.batch):
      return f'the Triton LSTM batch block must be a power of two >= 16, not {blocks.batch}'
    # Also the bound on hidden: a W_hh resident in registers is at most 64 hidden wide.
    shared = (hp + blocks.batch) * hp * jnp.dtype(w_dtype).itemsize
    if not blocks.resident_weights and shared > TRITON_SHARED_BYTES:
      return (f'the Triton LSTM stages a [{hp}, {hp}] {jnp.dtype(w_dtype).name} W_hh slice per '
              f'step through shared memory: {shared // 2**10} KiB at hidden {hidden}, over '
              f'{TRITON_SHARED_BYTES // 2**10} KiB; use lstm_impl=xla')
    return None
  if blocks.batch % 8 or blocks.time < 1:
    return (f'the TPU LSTM batch block must be a multiple of 8 and the time block >= 1, not '
            f'{blocks.batch} and {blocks.time}')
  need = tpu_vmem_bytes(blocks, hidden, x_dtype, w_dtype)
  if need > TPU_VMEM_BUDGET:
    return (f'the TPU LSTM needs {need / 2**20:.1f} MiB of VMEM for hidden {hidden} (W_hh stays on '
            f'chip; budget {TPU_VMEM_BUDGET // 2**20} MiB); use lstm_impl=xla')
  return None


# --- The plain-JAX reference. ---


def reference_lstm(xw: jax.Array, w_hh: jax.Array, h0: jax.Array, c0: jax.Array,
                   mask: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """The model's LSTM recurrence as a `lax.scan`, differentiated by JAX: what the kernels are
  tested against (`models.recurrent.reference_recurrence`, so kernel and model share one cell).

  xw [T, B, 4H] (input projections, bias included), w_hh [H, 4H], h0 and c0 [B, H], mask [T, B]
  (0: keep the state, output 0). Returns the outputs [T, B, H] and the final (h, c) [B, H], fp32.
  """
  from dl10_jax.models import recurrent  # Imported here: the model imports this module.
  return recurrent.reference_recurrence('lstm', xw, w_hh, (h0, c0), mask)


# --- The kernels behind a custom VJP, on padded arrays. ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused(backend, blocks, interpret, xw, w, h0, c0, mask):
  return _fused_fwd(backend, blocks, interpret, xw, w, h0, c0, mask)[0]


def _fused_fwd(backend, blocks, interpret, xw, w, h0, c0, mask):
  hs, cps, acts, ct = _lstm_kernels.FORWARD[backend](xw, w, h0, c0, mask, blocks=blocks,
                                                     interpret=interpret)
  x_dtype = jnp.zeros((0,), xw.dtype)  # Carries xw's dtype for its gradient.
  return (hs, ct), (w, h0, mask, hs, cps, acts, x_dtype)


def _fused_bwd(backend, blocks, interpret, residuals, cotangents):
  w, h0, mask, hs, cps, acts, x_dtype = residuals
  dhs, dct = cotangents  # [Tp, Bp, Hp], [Bp, Hp]
  dz, dh0, dc0 = _lstm_kernels.BACKWARD[backend](dhs.astype(F32), dct.astype(F32), acts, cps,
                                                 mask, w.T, blocks=blocks, interpret=interpret)
  h_prev = jnp.concatenate([h0[None], hs[:-1]])  # [Tp, Bp, Hp]
  dw = jnp.einsum('tbh,tbg->hg', h_prev.astype(w.dtype), dz.astype(w.dtype),
                  preferred_element_type=F32)  # [Hp, 4Hp]
  return dz.astype(x_dtype.dtype), dw.astype(w.dtype), dh0, dc0, jnp.zeros_like(mask)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _pad_gates(x: jax.Array, hp: int) -> jax.Array:
  """[..., 4H] -> [..., 4Hp]: each gate padded with zeros to hp (padded units stay at h = c = 0)."""
  hidden = x.shape[-1] // 4
  x = x.reshape(x.shape[:-1] + (4, hidden))
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, hp - hidden)])
  return x.reshape(x.shape[:-2] + (4 * hp,))


def lstm(xw: jax.Array, w_hh: jax.Array, h0: jax.Array, c0: jax.Array,
         mask: jax.Array | None = None, *, backend: str, interpret: bool = False,
         blocks: LstmBlocks | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """The fused LSTM: same arguments and results as `reference_lstm`, differentiable.

  backend: 'triton' (GPU) or 'tpu'; interpret=True runs either on CPU (tests; slow). blocks: from
  `choose_blocks` unless given. Raises a one-line ConfigError where these blocks cannot run.
  """
  time, batch, gates = xw.shape
  hidden = gates // 4
  if w_hh.shape != (hidden, gates) or h0.shape != (batch, hidden) or c0.shape != h0.shape:
    raise ConfigError(f'LSTM shapes do not match: xw {xw.shape}, w_hh {w_hh.shape}, '
                      f'h0 {h0.shape}, c0 {c0.shape}')
  blocks = blocks or choose_blocks(backend, batch, time, hidden, xw.dtype, w_hh.dtype)
  reason = unsupported_reason(backend, blocks, hidden, xw.dtype, w_hh.dtype)
  if reason:
    raise ConfigError(reason)
  hp = padded_hidden(backend, hidden)
  bp = _round_up(batch, blocks.batch)
  tp = _round_up(time, blocks.time) if blocks.time else time
  xw_p = jnp.pad(_pad_gates(xw, hp), ((0, tp - time), (0, bp - batch), (0, 0)))  # [Tp, Bp, 4Hp]
  w_p = _pad_gates(jnp.pad(w_hh, ((0, hp - hidden), (0, 0))), hp)  # [Hp, 4Hp]
  pad_state = lambda s: jnp.pad(s.astype(F32), ((0, bp - batch), (0, hp - hidden)))  # [Bp, Hp]
  m = jnp.ones((time, batch), F32) if mask is None else mask.astype(F32)
  m_p = jnp.pad(m, ((0, tp - time), (0, bp - batch)))[..., None]  # [Tp, Bp, 1]; padding frozen.
  hs, ct = _fused(backend, blocks, interpret, xw_p, w_p, pad_state(h0), pad_state(c0), m_p)
  hs = hs[:time, :batch, :hidden]  # The states [T, B, H]: an output only where the mask is 1.
  ys = hs if mask is None else hs * m[..., None]
  return ys, (hs[-1], ct[:batch, :hidden])
