"""DCGAN (Radford et al. 2015): a transposed-convolution generator and a strided-conv discriminator.

Generator: z [B, latent_dim] -> Dense -> [base, base, F * 2^(k-1)] -> k transposed 4x4 convolutions
of stride 2 (BN + ReLU between, channels halving) -> tanh, [B, S, S, C] in [-1, 1]. The transposed
convolution is PyTorch's (the reference DCGAN's), computed in a form that is fast on CPU.
Discriminator: k strided 4x4 convolutions (channels doubling, LeakyReLU 0.2, BN on all but the
first) -> one logit [B]. S = base * 2^k with base in 4..7: 28 = 7 * 4 (k = 2), 32 = 4 * 8 (k = 3).
Weights start from N(0, 0.02) as in the paper; BN as in models/layers.py. `DCGAN` holds the pair,
so its parameters are {'generator': ..., 'discriminator': ...}; the training logic (two
optimizers, the non-saturating loss) lives in dl10_jax/train/gan.py.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.models.layers import batch_norm



def dcgan_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  """N(0, 0.02), the paper's init, drawn flat: with JAX's partitionable threefry, XLA on CPU
  takes seconds to compile each many-dimensional draw, a tenth of that for a flat one."""
  return 0.02 * jax.random.normal(key, (int(np.prod(shape)),), dtype).reshape(shape)


# From this many output channels up, the 2x2-patches matmul beats the 3x3 phase convolution on
# CPU, forward + backward (1.1-1.5x at 16-32, 1.8x at 48, 2.3x at 64; at 1-8 it is as slow or
# slower: experiments/gan/README.md).
PATCHES_MIN_FEATURES = 16


CONV_TRANSPOSE_FORMS = ('auto', 'patches', '3x3')


def conv_transpose_2x(x: jax.Array, kernel: jax.Array, form: str = 'auto') -> jax.Array:
  """PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1), the DCGAN layer: x [B, H, W, Cin],
  kernel [4, 4, Cin, Cout] -> [B, 2H, 2W, Cout]; per axis out[p] = sum of x[m] k[t], 2m + t - 1 = p.

  Each of the 2x2 output phases reads only 2x2 input taps: phase a of an axis is out[2i + a] =
  sum over q in 0..1 of x[i + a + q - 1] k[3 - a - 2q]. Computed, for Cout >= PATCHES_MIN_FEATURES,
  as one matmul of the padded input's 2x2 patches [B, H+1, W+1, 4 Cin] with the four phase
  kernels; below that, as one 3x3 convolution to the four phases, whose zero taps cost less than
  the patches' copies there (`form` forces one: 'patches' or '3x3'). Both beat XLA's input-dilated
  convolution (nn.ConvTranspose) on CPU (experiments/gan/README.md); tests/test_gan.py checks both
  against the adjoint of the strided convolution.
  """
  check_choice('form', form, CONV_TRANSPOSE_FORMS)
  cin, cout = kernel.shape[2:]
  if form == '3x3' or (form == 'auto' and cout < PATCHES_MIN_FEATURES):
    return _conv_transpose_2x_3x3(x, kernel)
  b, h, w, _ = x.shape
  q, a = np.arange(2)[:, None], np.arange(2)[None, :]
  taps = 3 - a - 2 * q  # [2 offsets, 2 phases]
  k = kernel[taps[:, None, :, None], taps[None, :, None, :]]  # [qy, qx, ay, ax, Cin, Cout]
  k = k.transpose(0, 1, 4, 2, 3, 5).reshape(4 * cin, 4 * cout)  # rows (qy, qx, Cin)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([xp[:, qy:qy + h + 1, qx:qx + w + 1] for qy in range(2)
                             for qx in range(2)], axis=-1)  # [B, H+1, W+1, 4 Cin]
  z = (patches @ k).reshape(b, h + 1, w + 1, 2, 2, cout)
  # Phase (ay, ax) of output pixel (i, j) is patch (i + ay, j + ax).
  rows = [jnp.stack([z[:, ay:ay + h, ax:ax + w, ay, ax] for ax in range(2)], axis=3)
          for ay in range(2)]  # each [B, H, W, ax, Cout]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)  # from [B, H, ay, W, ax, Cout]


def _conv_transpose_2x_3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv_transpose_2x as one 3x3 convolution to the 2x2 output phases (4 * Cout channels) and a
  depth-to-space: output phase a reads input offsets w - 1 (w in 0..2) through tap
  t = 3 - 2w + a."""
  w, a = np.arange(3)[:, None], np.arange(2)[None, :]
  taps = 3 - 2 * w + a  # [3 offsets, 2 phases]
  valid = (taps >= 0) & (taps <= 3)
  taps = np.clip(taps, 0, 3)
  k = kernel[taps[:, None, :, None], taps[None, :, None, :]]  # [3, 3, 2, 2, Cin, Cout]
  k = k * (valid[:, None, :, None] & valid[None, :, None, :])[..., None, None].astype(k.dtype)
  cin, cout = kernel.shape[2:]
  k = k.transpose(0, 1, 4, 2, 3, 5).reshape(3, 3, cin, 4 * cout)  # HWIO, outputs (ay, ax, Cout)
  y = lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  b, h, wd, _ = x.shape
  y = y.reshape(b, h, wd, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)  # [B, H, ay, W, ax, Cout]
  return y.reshape(b, 2 * h, 2 * wd, cout)


class ConvTranspose2x(nn.Module):
  """`conv_transpose_2x` with a `kernel` [4, 4, Cin, Cout] and an optional `bias`."""
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', dcgan_init, (4, 4, x.shape[-1], self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = conv_transpose_2x(x, kernel)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,))
      y = y + bias.astype(y.dtype).reshape(1, 1, 1, -1)
    return y


def upsamplings(image_size: int) -> tuple[int, int]:
  """(base, k) with image_size = base * 2^k and base in 4..7: the generator's starting grid."""
  base, k = image_size, 0
  while base % 2 == 0 and base > 7:
    base, k = base // 2, k + 1
  if not 4 <= base <= 7 or k == 0:
    raise ConfigError(f'model.image_size={image_size} is not 4..7 times a power of two (such as '
                      '28 or 32)')
  return base, k


class Generator(nn.Module):
  image_size: int = 28
  channels: int = 1
  features: int = 64  # Channels of the last hidden layer; doubled towards the base grid.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    base, k = upsamplings(self.image_size)
    width = self.features * 2 ** (k - 1)
    x = nn.Dense(base * base * width, kernel_init=dcgan_init, use_bias=False, dtype=self.dtype)(z)
    x = nn.relu(batch_norm(train, self.dtype)(x.reshape(z.shape[0], base, base, width)))
    for i in range(k):  # [B, base * 2^i, ., width / 2^i] -> twice the size.
      last = i == k - 1
      x = ConvTranspose2x(self.channels if last else width // 2 ** (i + 1), use_bias=last,
                          dtype=self.dtype)(x)
      if not last:
        x = nn.relu(batch_norm(train, self.dtype)(x))
    return jnp.tanh(x.astype(jnp.float32))  # [B, S, S, C]


class Discriminator(nn.Module):
  image_size: int = 28
  features: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _, k = upsamplings(self.image_size)
    for i in range(k):  # [B, S / 2^i, ., .] -> half the size, F * 2^i channels.
      x = nn.Conv(self.features * 2 ** i, (4, 4), (2, 2), padding='SAME', use_bias=i == 0,
                  kernel_init=dcgan_init, dtype=self.dtype)(x)
      if i:  # No BN on the first layer (the paper: it destabilises the input statistics).
        x = batch_norm(train, self.dtype)(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Dense(1, kernel_init=dcgan_init, dtype=self.dtype)(x.reshape(x.shape[0], -1))
    return x[:, 0].astype(jnp.float32)  # [B] logits of "real".


class DCGAN(nn.Module):
  """The generator and discriminator as one model: `generate` and `discriminate` apply one each."""
  image_size: int = 28
  channels: int = 1
  latent_dim: int = 100
  features: int = 64  # Both networks' width (the paper: 128 at 64x64).
  generator_features: int = 0  # G's own width, to grow G at equal D; 0: `features`.
  dtype: Any = jnp.float32

  def setup(self):
    self.generator = Generator(self.image_size, self.channels,
                               self.generator_features or self.features, self.dtype)
    self.discriminator = Discriminator(self.image_size, self.features, self.dtype)

  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    """D(G(z)): creates both networks' variables at init."""
    return self.discriminator(self.generator(z, train), train)

  def generate(self, z: jax.Array, train: bool = False) -> jax.Array:
    return self.generator(z, train)  # [B, latent_dim] -> [B, S, S, C] in [-1, 1]

  def discriminate(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.shape[1:] != (self.image_size, self.image_size, self.channels):
      raise ConfigError(f'the DCGAN makes {self.image_size}x{self.image_size}x{self.channels} '
                        f'images but the data has {"x".join(map(str, x.shape[1:]))}; set '
                        'model.image_size and model.channels to match')
    return self.discriminator(x, train)  # [B] logits
