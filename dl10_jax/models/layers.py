"""Layers shared by the vision models, with backend-aware implementations.

XLA's native convolution is the right choice on GPU and TPU, but its CPU path (Eigen) is several
times slower than an explicit im2col + one matmul for the small convolutions of these models, and the
backward of `reduce_window` max-pooling is slow there too. `Conv2D(impl='auto')` picks per backend;
both have the same parameters and are tested equal (tests/test_layers.py, tests/test_models.py).
Keeping the im2col tensors in cache is the trainer's `microbatch_size` (train/objective.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dl10_jax.errors import ConfigError

CONV_IMPLS = ('auto', 'xla', 'patches')


def resolve_conv_impl(impl: str) -> str:
  if impl not in CONV_IMPLS:
    raise ConfigError(f'conv_impl={impl!r} is not supported; allowed: {", ".join(CONV_IMPLS)}')
  if impl == 'auto':
    return 'patches' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def im2col(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """[B, H, W, C] -> [B, H-kh+1, W-kw+1, kh*kw*C], taps ordered (row, col, channel) like HWIO."""
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  taps = [x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)]
  return jnp.concatenate(taps, axis=-1)


def conv2d(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
  """A stride-1 VALID convolution of x [B, H, W, Cin] with kernel [kh, kw, Cin, Cout]."""
  kh, kw, cin, cout = kernel.shape
  if resolve_conv_impl(impl) == 'xla':
    return lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return im2col(x, kh, kw) @ kernel.reshape(kh * kw * cin, cout)


class Conv2D(nn.Module):
  """Stride-1 2-D convolution with the parameters of `nn.Conv` (`kernel` HWIO, `bias`)."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  padding: str = 'VALID'  # VALID | SAME
  impl: str = 'auto'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.padding == 'SAME':
      x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    elif self.padding != 'VALID':
      raise ConfigError(f'padding={self.padding!r} is not supported; allowed: VALID, SAME')
    return conv2d(x, kernel, self.impl) + bias.reshape((1,) * (x.ndim - 1) + (-1,))


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling, stride 2, VALID ([B, H, W, C] -> [B, H//2, W//2, C]) as reshape + max.

  Equal to `nn.max_pool(x, (2, 2), (2, 2))` in value and gradient (a window's first maximum gets
  the gradient, also with ties). Its backward is a select, not XLA's select-and-scatter, which is
  slow on CPU.
  """
  return _max_pool_2x2_fwd(x)[0]


def _windows(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)


def _max_pool_2x2_fwd(x):
  windows = _windows(x)  # [B, H/2, 2, W/2, 2, C]
  y = windows.max(axis=(2, 4))
  is_max = windows == y[:, :, None, :, None, :]
  # Keep only the first maximum of each window in row-major order, as select-and-scatter does.
  in_row = is_max.sum(axis=4, keepdims=True, dtype=jnp.int32)
  before = (jnp.cumsum(in_row, axis=2) - in_row) + (jnp.cumsum(is_max, axis=4) - is_max)
  return y, (is_max & (before == 0), x.shape)


def _max_pool_2x2_bwd(residuals, g):
  is_max, shape = residuals
  b, h2, _, w2, _, c = is_max.shape
  dx = jnp.where(is_max, g[:, :, None, :, None, :], 0).reshape(b, 2 * h2, 2 * w2, c)
  return (jnp.pad(dx, ((0, 0), (0, shape[1] - 2 * h2), (0, shape[2] - 2 * w2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)
