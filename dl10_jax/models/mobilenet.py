"""Efficient CNNs built from depthwise-separable convolutions: MobileNet V1/V2 and ShuffleNet V2.

- MobileNetV1 (Howard et al. 2017): a 3x3/2 conv and 13 depthwise-separable blocks (3x3 depthwise
  + 1x1 pointwise). Width multiplier alpha scales every channel count as Keras does,
  `max(1, int(c * alpha))` (truncation: 0.25, 0.5 and 0.75 are exact); `resolution_multiplier` is
  the paper's rho, applied here by resizing the input (bilinear) inside the model. 1.0 at 224 with
  1000 classes has 4,231,976 parameters, Keras' trainable count (its 1e-3 dropout is left out).
- MobileNetV2 (Sandler et al. 2018), as torchvision: inverted residuals (1x1 expand, 3x3
  depthwise, linear 1x1 projection), channels `_make_divisible(c * alpha, 8)`, the last 1x1 conv
  1280 channels unless alpha > 1; dropout 0.2 before the head. 3,504,872 parameters (1.0, 1000).
- ShuffleNetV2 (Ma et al. 2018), as torchvision `shufflenet_v2_x{0_5,1_0,1_5,2_0}`: units that
  split (or, at stride 2, duplicate) the channels, run one branch, concatenate and shuffle;
  x1.0 has 2,278,604 parameters.

`small_input=True` (the default) is for 28x28 / 32x32 images, as CIFAR ports do: the same layers
and parameters, fewer early strides, so that the last feature map is not 1x1.
- MobileNetV1: the stem conv has stride 1 (not 2). Total downsampling 16 (28 -> 2, 32 -> 2).
- MobileNetV2: the stem conv and the first block of the (6, 24, 2, 2) stage have stride 1.
  Total 8 (28 -> 4, 32 -> 4).
- ShuffleNetV2: the stem conv has stride 1 and the 3x3/2 max-pool is dropped. Total 8.
`small_input=False` keeps the papers' strides (total 32: 224 -> 7).

A k x k conv pads k // 2 on each side, as torchvision (`padding='HALF'` of models/layers.py; not
TensorFlow's 'SAME', which at stride 2 pads only after). MobileNetV2 and ShuffleNetV2 with
`small_input=False` compute torchvision's function with its weights copied in
(tests/test_references.py). Every conv has no bias and is followed by BatchNorm (running
statistics in 'batch_stats', as models/resnet.py); Kaiming fan-out init.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError
from dl10_jax.models.layers import Conv2D, batch_norm, kaiming_normal

# (channels, stride) of the 13 depthwise-separable blocks (paper, table 1).
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5,
             (1024, 2), (1024, 1))
# (expansion t, channels c, blocks n, first stride s) of the inverted-residual stages.
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))
# torchvision's stages_out_channels per width: stem, three stages, conv5.
SHUFFLENET_CHANNELS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024),
                       1.5: (24, 176, 352, 704, 1024), 2.0: (24, 244, 488, 976, 2048)}
SHUFFLENET_REPEATS = (4, 8, 4)


def _check_positive(name: str, value: float) -> None:
  if not value > 0:
    raise ConfigError(f'model.{name}={value} is out of range; allowed: > 0')


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's `_make_divisible`: nearest multiple of divisor, never more than 10 % below."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBN(nn.Module):
  """Conv (no bias) + BatchNorm + activation (None: linear); `depthwise` keeps the channels."""
  features: int
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  activation: Callable[[jax.Array], jax.Array] | None = nn.relu
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    groups = x.shape[-1] if self.depthwise else 1  # Depthwise: kernel [k, k, 1, C].
    x = Conv2D(self.features, (self.kernel_size,) * 2, strides=self.strides, padding='HALF',
               feature_group_count=groups, use_bias=False, kernel_init=kaiming_normal,
               impl=self.conv_impl, dtype=self.dtype, name='conv')(x)
    x = batch_norm(train, self.dtype, name='bn')(x)
    return x if self.activation is None else self.activation(x)


class DepthwiseSeparable(nn.Module):
  """MobileNetV1's block: 3x3 depthwise (strided) + BN + ReLU, 1x1 pointwise + BN + ReLU."""
  features: int
  strides: int
  layer: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.layer(x.shape[-1], 3, self.strides, depthwise=True, name='dw')(x, train)
    return self.layer(self.features, 1, name='pw')(x, train)


class MobileNetV1(nn.Module):
  """[B, H, W, C] images -> [B, num_classes] logits (float32)."""
  num_classes: int = 10
  width_multiplier: float = 1.0  # The paper's alpha.
  resolution_multiplier: float = 1.0  # The paper's rho: the input is resized by this factor.
  small_input: bool = True  # Stem stride 1 (module docstring).
  conv_impl: str = 'auto'  # auto | xla | patches (models/layers.py)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _check_positive('width_multiplier', self.width_multiplier)
    _check_positive('resolution_multiplier', self.resolution_multiplier)
    if self.resolution_multiplier != 1.0:
      b, h, w, c = x.shape
      size = (max(1, round(h * self.resolution_multiplier)),
              max(1, round(w * self.resolution_multiplier)))
      x = jax.image.resize(x, (b, *size, c), 'bilinear')  # Antialiased when shrinking.
    width = lambda c: max(1, int(c * self.width_multiplier))  # Keras' rounding.
    layer = functools.partial(ConvBN, conv_impl=self.conv_impl, dtype=self.dtype)
    x = layer(width(32), 3, 1 if self.small_input else 2, name='stem')(x, train)
    for i, (features, strides) in enumerate(V1_BLOCKS):
      x = DepthwiseSeparable(width(features), strides, layer, name=f'block{i + 1}')(x, train)
    x = x.mean(axis=(1, 2))  # Global average pool: [B, C].
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(jnp.float32)


class InvertedResidual(nn.Module):
  """1x1 expand by t (none when t = 1), 3x3 depthwise, linear 1x1 projection; residual if shapes
  agree. The projection has no ReLU6: ReLU in a low-dimensional space loses information."""
  features: int
  strides: int
  expansion: int
  layer: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    hidden = int(round(x.shape[-1] * self.expansion))
    y = x
    if self.expansion != 1:
      y = self.layer(hidden, 1, activation=jax.nn.relu6, name='expand')(y, train)
    y = self.layer(hidden, 3, self.strides, depthwise=True, activation=jax.nn.relu6,
                   name='dw')(y, train)
    y = self.layer(self.features, 1, activation=None, name='project')(y, train)
    return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class MobileNetV2(nn.Module):
  """[B, H, W, C] images -> [B, num_classes] logits (float32); train=True needs a 'dropout' rng."""
  num_classes: int = 10
  width_multiplier: float = 1.0
  dropout_rate: float = 0.2  # Before the head, as torchvision.
  small_input: bool = True  # Stem and first 24-channel block stride 1 (module docstring).
  conv_impl: str = 'auto'  # auto | xla | patches (models/layers.py)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    alpha = self.width_multiplier
    _check_positive('width_multiplier', alpha)
    layer = functools.partial(ConvBN, activation=jax.nn.relu6, conv_impl=self.conv_impl,
                              dtype=self.dtype)
    x = layer(make_divisible(32 * alpha), 3, 1 if self.small_input else 2, name='stem')(x, train)
    block = 0
    for t, c, n, s in V2_STAGES:
      if self.small_input and c == 24:
        s = 1
      for i in range(n):
        block += 1
        x = InvertedResidual(make_divisible(c * alpha), s if i == 0 else 1, t, layer,
                             name=f'block{block}')(x, train)
    x = layer(make_divisible(1280 * max(1.0, alpha)), 1, name='last')(x, train)
    x = x.mean(axis=(1, 2))  # Global average pool: [B, C].
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    head = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                    name='head')  # torchvision's init of the classifier.
    return head(x).astype(jnp.float32)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """[B, H, W, C]: channel g * C/groups + k moves to k * groups + g, so branches exchange data."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, groups, c // groups)
  return x.transpose(0, 1, 2, 4, 3).reshape(b, h, w, c)


class ShuffleUnit(nn.Module):
  """Stride 1: keep half the channels, branch2 on the other half. Stride 2: branch1 (depthwise
  3x3/2 + BN, 1x1 + BN + ReLU) and branch2 both on all. branch2: 1x1, depthwise 3x3, 1x1."""
  features: int
  strides: int
  layer: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    half = self.features // 2
    if self.strides == 1:
      kept, y = jnp.split(x, 2, axis=-1)  # torchvision's chunk: branch2 takes the second half.
    else:
      kept = self.layer(x.shape[-1], 3, self.strides, depthwise=True, activation=None,
                        name='branch1_dw')(x, train)
      kept = self.layer(half, 1, name='branch1_pw')(kept, train)
      y = x
    y = self.layer(half, 1, name='branch2_pw1')(y, train)
    y = self.layer(half, 3, self.strides, depthwise=True, activation=None,
                   name='branch2_dw')(y, train)
    y = self.layer(half, 1, name='branch2_pw2')(y, train)
    return channel_shuffle(jnp.concatenate([kept, y], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """[B, H, W, C] images -> [B, num_classes] logits (float32)."""
  num_classes: int = 10
  width: float = 1.0  # torchvision's x0.5 | x1.0 | x1.5 | x2.0 channel table.
  small_input: bool = True  # Stem stride 1, no max-pool (module docstring).
  conv_impl: str = 'auto'  # auto | xla | patches (models/layers.py)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.width not in SHUFFLENET_CHANNELS:
      raise ConfigError(f'model.width={self.width} is not a ShuffleNetV2 width; allowed: '
                        f'{", ".join(map(str, SHUFFLENET_CHANNELS))}')
    stem, *stages, last = SHUFFLENET_CHANNELS[self.width]
    layer = functools.partial(ConvBN, conv_impl=self.conv_impl, dtype=self.dtype)
    x = layer(stem, 3, 1 if self.small_input else 2, name='stem')(x, train)
    if not self.small_input:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (repeats, features) in enumerate(zip(SHUFFLENET_REPEATS, stages)):
      for i in range(repeats):
        x = ShuffleUnit(features, 2 if i == 0 else 1, layer,
                        name=f'stage{stage + 2}_unit{i + 1}')(x, train)  # torchvision: stage2-4.
    x = layer(last, 1, name='conv5')(x, train)
    x = x.mean(axis=(1, 2))  # Global average pool: [B, C].
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(jnp.float32)
