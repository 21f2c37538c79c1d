"""Model FLOP/s as a fraction of what the hardware can do (model FLOPs utilisation, MFU).

On CPU the peak is measured (a large float32 matmul, once per process); on accelerators it is the
vendor's dense peak for the compute dtype.
"""

from __future__ import annotations

import functools
import time

import jax

# Dense peak FLOP/s per chip for bfloat16 (float32 uses the same units on TPU; GPUs differ).
ACCELERATOR_PEAKS = {
    'H100': 989e12, 'H200': 989e12, 'A100': 312e12,
    'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v6 lite': 918e12,
    'TPU v6e': 918e12, 'TPU v4': 275e12,
}


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of the fastest of `repeats` float32 n x n matmuls on the default device."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def peak_flops_per_device() -> float:
  """The per-device peak: the table for known accelerators, else a measured matmul."""
  kind = jax.devices()[0].device_kind
  for name, peak in ACCELERATOR_PEAKS.items():
    if name.lower() in kind.lower():
      return peak
  return measured_matmul_flops()


def peak_flops() -> float:
  """Peak FLOP/s of the whole job. CPU 'devices' (also fake ones) share one machine's cores."""
  if jax.default_backend() == 'cpu':
    return measured_matmul_flops()
  return peak_flops_per_device() * jax.device_count()
