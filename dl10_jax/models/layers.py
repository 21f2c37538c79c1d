"""Layers shared by several models: vision layers with backend-aware implementations, and the
Transformer building blocks of GPT and the Transformer (`rotary` position embeddings, GPT-2's
`MLP` and `residual_init`, the init of every projection that writes into the residual stream).

XLA's native convolution is the right choice on GPU and TPU. On CPU (Eigen) it is several times
slower than the explicit forms here for depthwise and 1x1 convolutions, and for the CNN's
micro-batched 3x3s; the backward of `reduce_window` max-pooling is slow there too.
`Conv2D(impl='auto')` picks per backend and kernel form (`resolve_conv_impl`); both paths have the
same parameters and are tested equal (tests/test_layers.py, tests/test_models.py).
Keeping the im2col tensors in cache is the trainer's `microbatch_size` (train/objective.py).

`remat` wraps a block class in rematerialisation (`model.remat` of GPT, the Transformer and the
U-Net): its backward recomputes the activations a policy does not save, trading compute for memory.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dl10_jax.errors import ConfigError, check_choice

CONV_IMPLS = ('auto', 'xla', 'patches')


def resolve_conv_impl(impl: str, kernel_shape: tuple[int, ...] = (3, 3, 1, 1),
                      groups: int = 1) -> str:
  """The implementation `impl` means for a kernel [kh, kw, Cin/groups, Cout] on this backend.

  On GPU and TPU every impl but an explicit 'xla' is XLA's convolution too: 'patches' names the
  CPU fast path. 'auto' on CPU takes patches where Eigen's convolution is the slow one: depthwise
  kernels and 1x1s (a plain matmul); whole-batch dense 3x3s keep XLA's, which is as fast or
  faster. Micro-batched 3x3s (the CNN's small chunks inside a scan) are much faster as patches:
  that config asks for 'patches' (figures: experiments/lightweight/README.md).
  """
  check_choice('conv_impl', impl, CONV_IMPLS)
  if impl == 'xla' or jax.default_backend() != 'cpu':
    return 'xla'
  if impl == 'patches':
    return impl
  kh, kw, cin_per_group, _ = kernel_shape
  return 'patches' if (groups > 1 and cin_per_group == 1) or kh == kw == 1 else 'xla'


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow/flax 'SAME': output ceil(size / stride); the odd pixel of padding goes after."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _taps(x: jax.Array, kh: int, kw: int, stride: int) -> list[jax.Array]:
  """The kh*kw strided windows of an already padded x, in (row, col) order, each [B, Ho, Wo, C]."""
  h, w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  return [x[:, i:i + (h - 1) * stride + 1:stride, j:j + (w - 1) * stride + 1:stride, :]
          for i in range(kh) for j in range(kw)]


def im2col(x: jax.Array, kh: int, kw: int, stride: int = 1) -> jax.Array:
  """[B, H, W, C] -> [B, Ho, Wo, kh*kw*C] (VALID), taps ordered (row, col, channel) like HWIO."""
  return jnp.concatenate(_taps(x, kh, kw, stride), axis=-1)


def conv2d(x: jax.Array, kernel: jax.Array, impl: str, stride: int = 1, padding: str = 'VALID',
           groups: int = 1) -> jax.Array:
  """`lax.conv_general_dilated` of x [B, H, W, Cin] with kernel [kh, kw, Cin/groups, Cout].

  padding: VALID, SAME (TensorFlow's: at stride 2 on an even size the odd pixel of padding goes
  after, so windows centre on pixels 1, 3, 5, ...) or HALF (k // 2 on every side: PyTorch's
  `padding=k // 2`, Caffe's and the papers' ResNets; windows centre on pixels 0, s, 2s, ...).

  The CPU path has three forms, each a few big fused ops instead of Eigen's convolution: dense
  kernels are im2col + one matmul (1x1: the matmul alone, on the strided input), depthwise kernels
  (groups = Cin = Cout) a sum of kh*kw shifted products. Other groupings use XLA's convolution.
  """
  kh, kw, cin_per_group, cout = kernel.shape
  depthwise = groups == x.shape[-1] == cout and cin_per_group == 1
  if padding == 'HALF':
    padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))
  if resolve_conv_impl(impl, kernel.shape, groups) == 'xla' or not (groups == 1 or depthwise):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                    feature_group_count=groups)
  if padding == 'SAME':
    padding = (same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride))
  if padding != 'VALID':
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  if depthwise:
    taps = _taps(x, kh, kw, stride)
    weights = kernel.reshape(kh * kw, cout)
    return sum(tap * weights[t].reshape(1, 1, 1, cout) for t, tap in enumerate(taps))
  if kh == kw == 1:
    return x[:, ::stride, ::stride, :] @ kernel.reshape(x.shape[-1], cout)
  return im2col(x, kh, kw, stride) @ kernel.reshape(kh * kw * x.shape[-1], cout)


PADDINGS = ('VALID', 'SAME', 'HALF')


class Conv2D(nn.Module):
  """2-D convolution with the parameters of `nn.Conv` (`kernel` HWIO, `bias`) and a CPU fast path.

  `feature_group_count = C` (in = out channels) is a depthwise convolution.
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  padding: str = 'VALID'  # VALID | SAME (flax's: output ceil(size / stride)) | HALF (conv2d)
  feature_group_count: int = 1
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  impl: str = 'auto'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    groups = self.feature_group_count
    check_choice('padding', self.padding, PADDINGS)
    if x.shape[-1] % groups or self.features % groups:
      raise ConfigError(f'feature_group_count={groups} must divide the input channels '
                        f'({x.shape[-1]}) and the output channels ({self.features})')
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, x.shape[-1] // groups, self.features), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = conv2d(x, kernel, self.impl, self.strides, self.padding, groups)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
    return y


# torchvision's conv init (kaiming_normal_, mode='fan_out', relu gain).
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def batch_norm(train: bool, dtype: Any, name: str | None = None,
               zero_init: bool = False) -> nn.BatchNorm:
  """PyTorch's BatchNorm2d defaults: running average with momentum 0.1 (flax: 0.9), eps 1e-5.

  Training normalises with the statistics of the batch the step sees, so with the trainer's
  micro-batching that is each micro-batch ("ghost" batch norm; see config `ghost_batch_norm`).
  One difference from PyTorch (flax's): the running variance averages the biased batch variance,
  PyTorch's the unbiased one, n / (n - 1) larger for n = B*H*W values per channel
  (tests/test_references.py).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
                      name=name)


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


# --- Transformer building blocks. ---


def rotary(x: jax.Array, positions: jax.Array | np.ndarray, base: float = 10_000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021) of x [B, T, H, D] at positions [T].

  Positions known at trace time (a NumPy array: training, a prompt at a fixed offset) give
  constant cos/sin tables. Traced ones (decoding) are computed in the step in float32: XLA:CPU
  fuses that into the elementwise rotation, evaluating cos and sin once per element of x (B x H
  times too often) in the forward and again in the backward, and float32 angles drift by ~1e-4
  at position 1,000.
  """
  half = x.shape[-1] // 2
  if isinstance(positions, np.ndarray):  # float64 tables: exact to float32 at any position.
    angles = positions[:, None] * base ** (-np.arange(half) / half)
    cos, sin = (np.asarray(f(angles), np.float32)[None, :, None, :] for f in (np.cos, np.sin))
  else:
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [T, D/2]
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


def residual_init(num_layers: int) -> nn.initializers.Initializer:
  """GPT-2's init of a projection into the residual stream: N(0, 0.02 / sqrt(2 num_layers)).

  Each of the 2 num_layers residual branches adds to the stream; scaling keeps its variance at
  initialisation independent of depth.
  """
  return nn.initializers.normal(0.02 / (2 * num_layers) ** 0.5)


class MLP(nn.Module):
  """GPT-2's position-wise MLP: `fc` (ratio x wider), tanh-approximated GELU, `proj` back."""
  residual_init: Any
  ratio: int = 4
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    width = x.shape[-1]
    h = nn.Dense(self.ratio * width, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02),
                 name='fc')(x)
    h = nn.gelu(h, approximate=True)  # GPT-2's tanh approximation.
    h = nn.Dense(width, dtype=self.dtype, kernel_init=self.residual_init, name='proj')(h)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(h)


# --- Rematerialisation. ---

# model.remat -> what the backward pass keeps of a block's forward (jax.checkpoint_policies).
# 'full' keeps only each block's inputs; 'dots' every matmul output; 'dots_no_batch' the weight
# matmuls but not attention's batched score and value products (at long context, the big ones).
REMAT_POLICIES: dict[str, Any] = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_saveable,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@functools.cache
def remat(cls: type[nn.Module], policy: str, static_argnums: tuple[int, ...] = ()
          ) -> type[nn.Module]:
  """`cls` recomputed in the backward pass as `policy` says ('none': `cls` itself).

  static_argnums count `self` as 0 and must cover every Python bool or int that steers the call
  (`train`, `causal`): the other arguments are traced, and keyword arguments always are. The
  wrapped class keeps the module's name, so parameter trees are the same with or without remat.
  """
  check_choice('model.remat', policy, tuple(REMAT_POLICIES))
  if policy == 'none':
    return cls
  return nn.remat(cls, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)
