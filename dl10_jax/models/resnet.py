"""Residual networks (He et al. 2015, "Deep residual learning").

Two families share the blocks:
- ImageNet ResNet-18/34/50/101/152 (`style='imagenet'`): 7x7/2 stem + 3x3/2 max-pool, four stages
  of 64-512 channels (x4 in Bottleneck), projection shortcuts, the stride on the 3x3 conv (the
  "v1.5" of torchvision, whose parameter counts these equal: tests/test_resnet.py).
- CIFAR ResNet-20/32/44/56/110 (`style='cifar'`, depth 6n+2): a 3x3 stem, three stages of 16/32/64
  channels with n BasicBlocks each. `shortcut='pad'` is the paper's option A (strided identity with
  zero channels added, no parameters: ResNet-20 has 0.27 M); 'projection' is option B.

BatchNorm keeps running statistics in the 'batch_stats' collection (the train state's
`model_state`): batch statistics in training, the running averages in eval. Convolutions have no
bias (BN follows each) and Kaiming-normal fan-out init, as torchvision; a k x k conv pads k // 2
on each side, as torchvision and the paper's Caffe models (not TensorFlow's 'SAME', which at
stride 2 pads only after: a different function on even sizes). The ImageNet models compute
torchvision's function with its weights copied in (tests/test_references.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.models.layers import Conv2D, batch_norm, kaiming_normal

IMAGENET_STAGES = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
                   50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3)),
                   152: ('bottleneck', (3, 8, 36, 3))}
STYLES = ('cifar', 'imagenet')
SHORTCUTS = ('projection', 'pad')
class Shortcut(nn.Module):
  """Identity, or (when the shape changes) a 1x1 strided conv + BN, or option A's padding."""
  features: int
  strides: int
  kind: str
  conv: Callable[..., nn.Module]
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if x.shape[-1] == self.features and self.strides == 1:
      return x
    if self.kind == 'pad':  # [B, H, W, C] -> [B, H/s, W/s, features]: new channels are zero.
      x = x[:, ::self.strides, ::self.strides, :]
      extra = self.features - x.shape[-1]
      return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    x = self.conv(self.features, (1, 1), strides=self.strides, name='conv')(x)
    return batch_norm(train, self.dtype, name='bn')(x)


class ResidualBlock(nn.Module):
  """What both blocks are built from; `conv` makes their convolutions (models/layers.Conv2D)."""
  features: int
  strides: int
  shortcut: str
  zero_init_residual: bool
  conv: Callable[..., nn.Module]
  dtype: Any


class BasicBlock(ResidualBlock):
  """Two 3x3 convs; out channels = features."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.features, (3, 3), strides=self.strides)(x)
    y = nn.relu(batch_norm(train, self.dtype)(y))
    y = self.conv(self.features, (3, 3))(y)
    y = batch_norm(train, self.dtype, zero_init=self.zero_init_residual)(y)
    return nn.relu(y + Shortcut(self.features, self.strides, self.shortcut, self.conv,
                                self.dtype)(x, train))


class Bottleneck(ResidualBlock):
  """1x1 reduce, 3x3 (strided), 1x1 expand to 4 * features."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = nn.relu(batch_norm(train, self.dtype)(self.conv(self.features, (1, 1))(x)))
    y = self.conv(self.features, (3, 3), strides=self.strides)(y)
    y = nn.relu(batch_norm(train, self.dtype)(y))
    y = self.conv(self.features * 4, (1, 1))(y)
    y = batch_norm(train, self.dtype, zero_init=self.zero_init_residual)(y)
    return nn.relu(y + Shortcut(self.features * 4, self.strides, self.shortcut, self.conv,
                                self.dtype)(x, train))


def architecture(style: str, depth: int) -> tuple[type[nn.Module], tuple[int, ...], tuple[int, ...]]:
  """(block, blocks per stage, channels per stage) of a named ResNet."""
  check_choice('model.style', style, STYLES)
  if style == 'imagenet':
    if depth not in IMAGENET_STAGES:
      raise ConfigError(f'model.depth={depth} is not an ImageNet ResNet; allowed: '
                        f'{", ".join(map(str, IMAGENET_STAGES))}')
    block, stages = IMAGENET_STAGES[depth]
    return (BasicBlock if block == 'basic' else Bottleneck), stages, (64, 128, 256, 512)
  if depth < 8 or (depth - 2) % 6:
    raise ConfigError(f'model.depth={depth} is not a CIFAR ResNet; allowed: 6n+2 (20, 32, 44, '
                      '56, 110, ...)')
  return BasicBlock, ((depth - 2) // 6,) * 3, (16, 32, 64)


class ResNet(nn.Module):
  """[B, H, W, C] images -> [B, num_classes] logits (float32)."""
  num_classes: int = 10
  depth: int = 20
  style: str = 'cifar'  # cifar | imagenet
  shortcut: str = 'pad'  # pad (option A, CIFAR only) | projection (option B)
  zero_init_residual: bool = False  # Zero scale of each branch's last BN (Goyal et al. 2017).
  conv_impl: str = 'auto'  # auto | xla | patches (models/layers.py)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    block, stages, widths = architecture(self.style, self.depth)
    check_choice('model.shortcut', self.shortcut, SHORTCUTS)
    if self.shortcut == 'pad' and self.style == 'imagenet':
      raise ConfigError("model.shortcut='pad' is for CIFAR ResNets; ImageNet ResNets use "
                        "'projection'")
    conv = functools.partial(Conv2D, padding='HALF', use_bias=False, kernel_init=kaiming_normal,
                             impl=self.conv_impl, dtype=self.dtype)
    if self.style == 'imagenet':
      x = conv(64, (7, 7), strides=2, name='stem')(x)
      x = nn.relu(batch_norm(train, self.dtype, name='stem_bn')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(widths[0], (3, 3), name='stem')(x)
      x = nn.relu(batch_norm(train, self.dtype, name='stem_bn')(x))
    for stage, (num_blocks, features) in enumerate(zip(stages, widths)):
      for i in range(num_blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = block(features, strides, self.shortcut, self.zero_init_residual, conv, self.dtype,
                  name=f'stage{stage + 1}_block{i + 1}')(x, train)
    x = x.mean(axis=(1, 2))  # Global average pool: [B, C].
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)
