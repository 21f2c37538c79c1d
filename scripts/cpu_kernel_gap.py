"""The kernels under every family's step, JAX (XLA:CPU) against PyTorch (oneDNN) on this CPU.

  python scripts/cpu_kernel_gap.py --out experiments/benchmarks/kernel_gap.jsonl
  python scripts/cpu_kernel_gap.py --dtype bfloat16 --out ...   # bf16 operands (AMX where present)

A family's step can be no faster than its matmuls and convolutions, so this times them alone, at the
shapes the families use: matmuls (GPT's projections, the LSTM's recurrent step and its weight
gradient, a square 2048³), ResNet-20's 3x3 convolutions split into forward, input gradient and
weight gradient, and the DCGAN's transposed convolutions (forward + backward, also in the form
models/gan.py does not pick at that width); all in --dtype (bfloat16: bf16 operands and results on
both sides, as under `dtype=bfloat16` or PyTorch's autocast; XLA_FLAGS, as set, applies to JAX).
Each figure is the median over `--repeats` calls (each call runs the kernel enough times to take
~0.1 s); every call's time goes to --out, one JSON line per kernel.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from step_timing import call_times, cpu_name  # noqa: E402

_OUT = flags.DEFINE_string('out', '', 'JSON-lines file to append every call to (empty: none).')
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed calls per kernel and side.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Operand dtype.')

# (name, m, k, n) of `[m, k] @ [k, n]`.
MATMULS = (('square', 2048, 2048, 2048),
           ('gpt default qkv (B*T=4096, 128 -> 384)', 4096, 128, 384),
           ('gpt mini mlp (B*T=4096, 384 -> 1536)', 4096, 384, 1536),
           ('lstm step (B=32, 512 -> 4*512)', 32, 512, 2048),
           ('lstm dW_hh (T*B=4096)', 512, 4096, 2048))
# (name, batch, size, channels) of ResNet-20's 3x3 stride-1 convolutions.
CONVS = (('resnet-20 stage 1', 64, 28, 16), ('resnet-20 stage 2', 64, 14, 32),
         ('resnet-20 stage 3', 64, 7, 64))
# (name, batch, size, Cin, Cout) of the DCGAN generator's transposed 4x4 stride-2 convolutions,
# forward + backward (input and kernel gradients); JAX's as the model computes it, and again in
# its 3x3 phase-convolution form (models/gan.py picks by Cout).
CONV_TRANSPOSES = (('dcgan G32 first', 64, 7, 64, 32), ('dcgan G48 first', 64, 7, 96, 48),
                   ('dcgan G64 first', 64, 7, 128, 64), ('dcgan G48 last', 64, 14, 48, 1),
                   ('14x14 64 -> 8', 64, 14, 64, 8), ('14x14 64 -> 16', 64, 14, 64, 16))


def _calls_ms(fn, repeats: int) -> list[float]:
  """Milliseconds per run of fn (which blocks), for each of `repeats` calls of ~0.1 s each."""
  runs = max(1, int(0.1 / max(call_times(fn, 2)[-1], 1e-6)))  # The first call compiles.
  return [t / runs * 1e3 for t in call_times(lambda: [fn() for _ in range(runs)], repeats)]


def jax_kernels() -> dict:
  import jax
  import jax.numpy as jnp
  from dl10_jax.models import gan
  from dl10_jax.models.layers import conv2d

  key = jax.random.PRNGKey(0)
  normal = lambda shape: jax.random.normal(key, shape, _DTYPE.value)  # noqa: E731
  out = {}
  for name, m, k, n in MATMULS:
    a, b = normal((m, k)), normal((k, n))
    matmul = jax.jit(jnp.matmul)
    out[f'matmul {name}'] = lambda a=a, b=b, f=matmul: f(a, b).block_until_ready()
  for name, batch, size, ch in CONVS:
    x = normal((batch, size, size, ch))
    w = normal((3, 3, ch, ch)) * 0.1
    conv = lambda x, w: conv2d(x, w, 'xla', 1, 'HALF')  # noqa: E731
    dy = conv(x, w)
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
    dw = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    out[f'conv {name} forward'] = lambda x=x, w=w, f=fwd: f(x, w).block_until_ready()
    out[f'conv {name} input grad'] = lambda x=x, w=w, dy=dy, f=dx: f(x, w, dy).block_until_ready()
    out[f'conv {name} weight grad'] = lambda x=x, w=w, dy=dy, f=dw: f(x, w, dy).block_until_ready()
  for name, batch, size, cin, cout in CONV_TRANSPOSES:
    x, w = normal((batch, size, size, cin)), normal((4, 4, cin, cout)) * 0.1
    for label, form in (('', 'auto'), (' 3x3 form', '3x3')):
      def loss(x, w, form=form):
        return jnp.square(gan.conv_transpose_2x(x, w, form)).sum()
      step = jax.jit(jax.grad(loss, argnums=(0, 1)))
      out[f'convT {name}{label} fwd+bwd'] = lambda x=x, w=w, f=step: jax.block_until_ready(f(x, w))
  return out


def torch_kernels() -> dict:
  import torch
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  dtype = getattr(torch, _DTYPE.value)
  out = {}
  for name, m, k, n in MATMULS:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out[f'matmul {name}'] = lambda a=a, b=b: a @ b
  for name, batch, size, ch in CONVS:  # NCHW, as the twins (scripts/torch_twins.py).
    x = torch.randn(batch, ch, size, size, dtype=dtype)
    w = torch.randn(ch, ch, 3, 3, dtype=dtype) * 0.1
    dy = torch.nn.functional.conv2d(x, w, padding=1)
    grad = torch.nn.grad
    out[f'conv {name} forward'] = lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1)
    out[f'conv {name} input grad'] = lambda x=x, w=w, dy=dy: grad.conv2d_input(
        x.shape, w, dy, padding=1)
    out[f'conv {name} weight grad'] = lambda x=x, w=w, dy=dy: grad.conv2d_weight(
        x, w.shape, dy, padding=1)
  for name, batch, size, cin, cout in CONV_TRANSPOSES:
    x = torch.randn(batch, size, size, cin, dtype=dtype).permute(0, 3, 1, 2).requires_grad_()
    w = (torch.randn(cin, cout, 4, 4, dtype=dtype) * 0.1).requires_grad_()  # channels_last x

    def step(x=x, w=w):
      torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=1).square().sum().backward()
    out[f'convT {name} fwd+bwd'] = out[f'convT {name} 3x3 form fwd+bwd'] = step
  return out


def main(argv):
  del argv
  import jax
  import torch
  sides = {'jax': jax_kernels(), 'torch': torch_kernels()}
  versions = {'jax': jax.__version__, 'torch': torch.__version__}
  xla_flags = os.environ.get('XLA_FLAGS', '') or 'none'
  print(f'{cpu_name()}; jax {versions["jax"]}, torch {versions["torch"]}; {_DTYPE.value}; '
        f'XLA_FLAGS {xla_flags}; medians over {_REPEATS.value} calls\n')
  print('| kernel | jax ms | torch ms | jax / torch speed |\n|---|---|---|---|')
  for kernel in sides['jax']:
    medians = {}
    for side, kernels in sides.items():
      calls = _calls_ms(kernels[kernel], _REPEATS.value)
      medians[side] = statistics.median(calls)
      if _OUT.value:
        with open(_OUT.value, 'a') as f:
          f.write(json.dumps({'kernel': kernel, 'side': side, 'version': versions[side],
                              'cpu': cpu_name(), 'dtype': _DTYPE.value, 'xla_flags': xla_flags,
                              'ms_per_run_calls': calls}) + '\n')
    print(f'| {kernel} | {medians["jax"]:.3f} | {medians["torch"]:.3f} | '
          f'{medians["torch"] / medians["jax"]:.2f}x |', flush=True)


if __name__ == '__main__':
  app.run(main)
