"""Speed of the Pallas kernels (dl10_jax/kernels) against the alternatives, on this machine.

  python scripts/bench_kernels.py --kernel attention                 # GPU / TPU: the full grid
  python scripts/bench_kernels.py --kernel attention --seq_lens 2048 --head_dims 128 --no_causal

Attention: own flash attention vs plain XLA attention (`attention_impl=xla`) vs cuDNN
(`jax.nn.dot_product_attention(implementation='cudnn')`, GPUs) vs jax's bundled Pallas kernels
(Triton `mha` on GPUs, `attention_mgpu` on Hopper, the Mosaic `flash_attention` on TPUs), forward
and forward + backward, at GPT-like shapes: B * T = --tokens (16k), T in --seq_lens, D in
--head_dims, H * D = --width, bfloat16. TFLOP/s count the matmul FLOPs of exact attention
(4 B H T^2 D forward, half under causal; the backward 2.5x the forward), the convention of the
FlashAttention papers, so a kernel that skips masked blocks is not credited for them.

LSTM (`--kernel lstm`): one LSTM layer (input projection + recurrence) as the fused Pallas LSTM vs
the model's `lax.scan` LSTM (`lstm_impl=xla`) vs cuDNN (`jax.experimental.rnn.lstm`, GPUs), forward
and forward + backward, hidden in --hiddens (128, 256, 512), T in --lstm_seq_lens (64, 256, 1024),
B = --lstm_batch; TFLOP/s count the two matmuls (16 B T H^2 forward, 3x for forward + backward) and
"x scan" is the speed-up over the scan (the fused kernel aims at >= 3 on an H100).

On a CPU it runs tiny shapes with the Pallas kernels in interpret mode, only to prove the script
and the kernels work end to end: the numbers are not speeds (it says so). Each kernel is one
section (`SECTIONS`); --kernel picks one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dl10_jax.kernels import flash_attention as fa  # noqa: E402
from dl10_jax.kernels import lstm as lstm_kernel  # noqa: E402
from dl10_jax.models import attention  # noqa: E402
from dl10_jax.models import recurrent  # noqa: E402

_KERNEL = flags.DEFINE_enum('kernel', 'attention', ['attention', 'lstm'],
                             'Which section to run.')
_ITERS = flags.DEFINE_integer('iters', 20, 'Timed calls per measurement (the median is kept).')
_CALLS = flags.DEFINE_string(
    'calls_jsonl', '', 'Append every timed call (seconds; the dropped compile call marked) to this '
    'JSON-lines file, one line per measurement, so that a table can be rebuilt from all calls.')
_TOKENS = flags.DEFINE_integer('tokens', 16384, 'Attention: B * T.')
_WIDTH = flags.DEFINE_integer('width', 1024, 'Attention: H * D (heads = width / head dim).')
_SEQ_LENS = flags.DEFINE_list('seq_lens', ['512', '1024', '2048', '4096', '8192'],
                              'Attention: sequence lengths.')
_HEAD_DIMS = flags.DEFINE_list('head_dims', ['64', '128'], 'Attention: head dims.')
_IMPLS = flags.DEFINE_list('impls', [], 'Attention: only these (default: all this machine runs).')
_CAUSAL = flags.DEFINE_bool('causal', True, 'Attention: causal (GPT) or full.')
_HIDDENS = flags.DEFINE_list('hiddens', ['128', '256', '512'], 'LSTM: hidden sizes.')
_LSTM_SEQ_LENS = flags.DEFINE_list('lstm_seq_lens', ['64', '256', '1024'],
                                   'LSTM: sequence lengths.')
_LSTM_BATCH = flags.DEFINE_integer('lstm_batch', 64, 'LSTM: batch size.')
_LSTM_DTYPE = flags.DEFINE_enum('lstm_dtype', 'bfloat16', ['bfloat16', 'float32'], 'LSTM: dtype.')
_FLASH_BLOCKS = flags.DEFINE_list(
    'flash_blocks', [], 'Attention: also time the flash kernel at these blocks, QxK (e.g. 64x64), '
    'forward and backward alike: a sweep for the Triton / TPU block tables.')
_LSTM_BLOCKS = flags.DEFINE_list(
    'lstm_blocks', [], 'LSTM: also time the fused kernel at these Triton settings, BATCHxWARPS '
    '(e.g. 16x4; batch rows per program, num_warps): a sweep for `choose_blocks`.')


def timed(fn: Callable, *args, label: str = '') -> float:
  """Median seconds per call of a jitted fn over every timed call. One call before them is dropped
  (it compiles); with --calls_jsonl every call, the dropped one included, goes to the log."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  dropped = time.perf_counter() - start
  times = []
  for _ in range(_ITERS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  if _CALLS.value:
    with open(_CALLS.value, 'a', encoding='utf-8') as f:
      f.write(json.dumps({'measurement': label, 'device': _device(), 'seconds': times,
                          'dropped': {'seconds': dropped, 'why': 'compilation'}}) + '\n')
  return statistics.median(times)


def _device() -> str:
  device = jax.devices()[0]
  return f'{device.platform} ({device.device_kind}), jax {jax.__version__}'


# --- Attention. ---

def _attention_impls(platform: str, kind: str, causal: bool, interpret: bool):
  """name -> f(q, k, v) on [B, T, H, D], for every implementation this machine can run."""
  impls = {
      'flash': functools.partial(fa.flash_attention, causal=causal, interpret=interpret),
      'xla': functools.partial(attention.dot_product_attention, causal=causal, impl='xla'),
  }
  for spec in _FLASH_BLOCKS.value:
    block_q, block_k = (int(n) for n in spec.split('x'))
    impls[f'flash {spec}'] = functools.partial(fa.flash_attention, causal=causal,
                                               interpret=interpret, block_q=block_q,
                                               block_k=block_k)
  triton_mha = _jax_triton_mha()
  if platform != 'tpu' and triton_mha is not None:  # On CPU in the interpreter.
    impls['jax_triton_mha'] = lambda q, k, v: triton_mha.mha(
        q, k, v, None, sm_scale=q.shape[-1] ** -0.5, causal=causal, interpret=interpret)
  if platform == 'gpu':
    impls['cudnn'] = functools.partial(jax.nn.dot_product_attention, is_causal=causal,
                                       implementation='cudnn')
    if 'H100' in kind or 'H200' in kind or 'H800' in kind:
      from jax.experimental.pallas.ops.gpu import attention_mgpu
      config = attention_mgpu.TuningConfig(
          block_q=64, block_kv=128, max_concurrent_steps=2, causal=causal, block_q_dkv=64,
          block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)
      # float16: it rejects bf16 inputs in jax 0.11.2 (and has no causal backward yet).
      impls['jax_mgpu_f16'] = lambda q, k, v: attention_mgpu.attention(
          *(x.astype(jnp.float16) for x in (q, k, v)), config=config)
  elif platform == 'tpu':
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
    impls['jax_tpu_flash'] = lambda q, k, v: jnp.swapaxes(tpu_flash.flash_attention(
        *(jnp.swapaxes(x, 1, 2) for x in (q, k, v)), causal=causal,
        sm_scale=q.shape[-1] ** -0.5), 1, 2)
  return impls


def _jax_triton_mha():
  """jax's own Triton flash attention, the baseline to beat on GPU; jax 0.12.1 dropped it."""
  try:
    from jax.experimental.pallas.ops.gpu import attention
  except ImportError:
    print(f'jax {jax.__version__} has no Triton mha (jax.experimental.pallas.ops.gpu.attention, '
          'removed in 0.12.1): its column is left out.')
    return None
  return attention


def bench_attention() -> None:
  platform, kind = jax.default_backend(), jax.devices()[0].device_kind
  interpret = platform == 'cpu'
  tokens, width = _TOKENS.value, _WIDTH.value
  seq_lens, head_dims = [int(t) for t in _SEQ_LENS.value], [int(d) for d in _HEAD_DIMS.value]
  if interpret:
    print('CPU: the Pallas kernels run in interpret mode at tiny shapes, to prove that this '
          'script and the kernels work; these numbers are NOT speeds.')
    tokens, width, seq_lens, head_dims = 256, 128, [64, 128], [64]
  causal = _CAUSAL.value
  impls = _attention_impls(platform, kind, causal, interpret)
  if _IMPLS.value:
    impls = {name: f for name, f in impls.items() if name in _IMPLS.value}
  print(f'attention on {_device()}: bf16, B*T = {tokens}, H*D = {width}, causal={causal}')
  print(f'{"impl":>15} {"T":>6} {"D":>4} {"B":>4} {"H":>3} {"fwd ms":>9} {"TFLOP/s":>8} '
        f'{"fwd+bwd ms":>11} {"TFLOP/s":>8}')
  for d in head_dims:
    for t in seq_lens:
      b, h = max(1, tokens // t), max(1, width // d)
      keys = jax.random.split(jax.random.PRNGKey(0), 3)
      q, k, v = (jax.random.normal(key, (b, t, h, d), jnp.bfloat16) for key in keys)
      flops = 4 * b * h * t * t * d * (0.5 if causal else 1.0)
      for name, f in impls.items():
        loss = lambda q, k, v, f=f: jnp.sum(f(q, k, v).astype(jnp.float32))
        try:
          fwd = timed(jax.jit(f), q, k, v, label=f'{name} T{t} D{d} fwd')
          both = timed(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))), q, k, v,
                       label=f'{name} T{t} D{d} fwd+bwd')
        except Exception as e:  # noqa: BLE001 - one impl failing must not stop the table.
          print(f'{name:>15} {t:>6} {d:>4} {b:>4} {h:>3}  n/a: {type(e).__name__}: '
                f'{str(e).splitlines()[0][:90]}')
          continue
        print(f'{name:>15} {t:>6} {d:>4} {b:>4} {h:>3} {fwd * 1e3:>9.3f} '
              f'{flops / fwd / 1e12:>8.3g} {both * 1e3:>11.3f} {3.5 * flops / both / 1e12:>8.3g}')


# --- LSTM. ---

def _lstm_impls(platform: str, interpret: bool):
  """name -> f(x [B, T, H], (w_ih, b, w_hh, cudnn_weights)) -> outputs [B, T, H]; the input
  projection is in every one (cuDNN fuses it), so the comparison is layer against layer."""
  variant = 'tpu' if platform == 'tpu' else 'triton'

  def projected(recurrence_fn):
    def f(x, params):
      w_ih, b, w_hh, _ = params
      xw = (x @ w_ih + b).swapaxes(0, 1)  # [T, B, 4H]: one matmul for all steps.
      zeros = jnp.zeros((x.shape[0], w_hh.shape[0]), jnp.float32)
      return recurrence_fn(xw, w_hh, zeros).swapaxes(0, 1)
    return f

  impls = {  # The scan first: the others' speed-ups are over it.
      'scan': projected(lambda xw, w_hh, z: recurrent.recurrence('lstm', xw, w_hh, (z, z))[0]),
      'fused': projected(lambda xw, w_hh, z: lstm_kernel.lstm(
          xw, w_hh, z, z, backend=variant, interpret=interpret)[0]),
  }
  for spec in _LSTM_BLOCKS.value:
    rows, warps = (int(n) for n in spec.split('x'))

    def swept(xw, w_hh, z, rows=rows, warps=warps):
      (time, batch, _), hidden = xw.shape, w_hh.shape[0]
      blocks = dataclasses.replace(
          lstm_kernel.choose_blocks(variant, batch, time, hidden, xw.dtype, w_hh.dtype),
          batch=rows, num_warps=warps)
      return lstm_kernel.lstm(xw, w_hh, z, z, backend=variant, interpret=interpret,
                              blocks=blocks)[0]
    impls[f'f{spec}'] = projected(swept)
  if platform == 'gpu':
    from jax.experimental import rnn

    def cudnn(x, params):
      batch, _, hidden = x.shape
      zeros = jnp.zeros((1, batch, hidden), x.dtype)
      lengths = jnp.full((batch,), x.shape[1], jnp.int32)
      return rnn.lstm(x, zeros, zeros, params[3], lengths, input_size=hidden, hidden_size=hidden,
                      num_layers=1, dropout=0.0, bidirectional=False)[0]
    impls['cudnn'] = cudnn
  return impls


def bench_lstm() -> None:
  platform = jax.default_backend()
  interpret = platform == 'cpu'
  batch, dtype = _LSTM_BATCH.value, jnp.dtype(_LSTM_DTYPE.value)
  hiddens, seq_lens = [int(h) for h in _HIDDENS.value], [int(t) for t in _LSTM_SEQ_LENS.value]
  if interpret:
    print('CPU: the fused LSTM runs in interpret mode at tiny shapes, to prove that this script '
          'and the kernel work; these numbers are NOT speeds.')
    batch, hiddens, seq_lens = 8, [32], [16]
  impls = _lstm_impls(platform, interpret)
  print(f'LSTM layer on {_device()}: {dtype.name}, B = {batch}, input size = hidden; '
        'fwd+bwd = value and gradients w.r.t. inputs and weights; x scan = speed-up over scan')
  print(f'{"impl":>6} {"H":>5} {"T":>5} {"fwd ms":>9} {"TFLOP/s":>8} {"x scan":>7} '
        f'{"fwd+bwd ms":>11} {"TFLOP/s":>8} {"x scan":>7}')
  for h in hiddens:
    for t in seq_lens:
      keys = jax.random.split(jax.random.PRNGKey(0), 5)
      x = jax.random.normal(keys[0], (batch, t, h), dtype)
      params = (jax.random.normal(keys[1], (h, 4 * h), dtype) / h ** 0.5,
                jnp.zeros((4 * h,), dtype),
                jax.random.normal(keys[2], (h, 4 * h), dtype) / h ** 0.5,
                # cuDNN's flat weights: W_ih, W_hh (4H x H each) and two biases (4H each).
                jax.random.normal(keys[3], (8 * h * h + 8 * h,), dtype) / h ** 0.5)
      flops = 2 * batch * t * (2 * h) * 4 * h  # Input and recurrent matmuls, forward.
      scan = {}
      for name, f in impls.items():
        loss = lambda x, params, f=f: jnp.sum(f(x, params).astype(jnp.float32))
        try:
          fwd = timed(jax.jit(f), x, params, label=f'{name} H{h} T{t} fwd')
          both = timed(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), x, params,
                       label=f'{name} H{h} T{t} fwd+bwd')
        except Exception as e:  # noqa: BLE001 - one impl failing must not stop the table.
          print(f'{name:>6} {h:>5} {t:>5}  n/a: {type(e).__name__}: '
                f'{str(e).splitlines()[0][:90]}')
          continue
        if name == 'scan':
          scan = {'fwd': fwd, 'both': both}
        ratio = lambda key, s: f'{scan[key] / s:>7.2f}' if scan else f'{"n/a":>7}'
        print(f'{name:>6} {h:>5} {t:>5} {fwd * 1e3:>9.3f} {flops / fwd / 1e12:>8.3g} '
              f'{ratio("fwd", fwd)} {both * 1e3:>11.3f} {3 * flops / both / 1e12:>8.3g} '
              f'{ratio("both", both)}')


SECTIONS = {'attention': bench_attention, 'lstm': bench_lstm}


def main(argv) -> None:
  del argv
  SECTIONS[_KERNEL.value]()


if __name__ == '__main__':
  app.run(main)
