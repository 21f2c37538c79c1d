"""The denoising U-Net of Ho et al. 2020 (DDPM), for the diffusion objective (train/diffusion.py).

(x_t [B, H, W, C], t int [B]) -> [B, H, W, C]: eps or v, whichever the objective trains for.

- t: a sinusoidal embedding (as the Transformer's positions) -> Dense(4c) -> SiLU -> Dense(4c),
  added to every residual block after its first conv (a per-channel bias).
- Residual blocks: GroupNorm -> SiLU -> conv3x3 (+ time) -> GroupNorm -> SiLU -> dropout ->
  conv3x3 (zero-initialised, so each block starts as its shortcut); a 1x1 conv shortcut where the
  channels change.
- Down path: `num_res_blocks` blocks per level of `channels * channel_mults[level]`, then a
  stride-2 conv; up path: `num_res_blocks + 1` blocks per level, each on the concatenation with the
  matching down-path output (skip connection), then nearest upsampling to the skip's size + a conv
  to the next level's channels.
  28 -> 14 -> 7 and back for Fashion-MNIST; 32 -> 16 -> 8 for CIFAR-10; odd sizes (7 -> 4) resize
  back to the skip's exact size.
- Self-attention (a head per `head_channels` channels; a residual GroupNorm -> attention block) at
  the spatial sizes in `attention_resolutions` and in the middle. It is `attention.
  MultiHeadAttention`, so it runs through the shared `dot_product_attention` and its
  `attention_impl`.
- `remat`: the residual and attention blocks recompute their activations in the backward pass
  (`layers.remat`), to save memory.
Ho et al.'s CIFAR-10 model is channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
attention at 16x16, dropout 0.1 (35.7 M parameters); the CPU recipe (configs/diffusion.py) is much
smaller.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError
from dl10_jax.models import layers
from dl10_jax.models.attention import MultiHeadAttention
from dl10_jax.models.layers import Conv2D


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """t [B] (int or float) -> [B, dim]: [sin(t w_i), cos(t w_i)], w_i from 1 to 1/max_period."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # [half]
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, half]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))  # An odd dim gets a zero column.


def _group_norm(groups: int, channels: int, dtype: Any, name: str | None = None) -> nn.GroupNorm:
  """GroupNorm with `groups` groups, fewer where the channels are fewer (never a ragged group)."""
  g = math.gcd(groups, channels)
  return nn.GroupNorm(num_groups=g, epsilon=1e-5, dtype=dtype, name=name)


class ResBlock(nn.Module):
  """[B, H, W, Cin], time embedding [B, E] -> [B, H, W, features]."""
  features: int
  groups: int
  dropout: float
  conv: Any
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    h = nn.silu(_group_norm(self.groups, x.shape[-1], self.dtype)(x))
    h = self.conv(self.features, (3, 3))(h)
    h = h + nn.Dense(self.features, dtype=self.dtype, name='time')(nn.silu(temb))[:, None, None, :]
    h = nn.silu(_group_norm(self.groups, self.features, self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = self.conv(self.features, (3, 3), kernel_init=nn.initializers.zeros, name='out')(h)
    if x.shape[-1] != self.features:
      x = self.conv(self.features, (1, 1), name='shortcut')(x)
    return x + h


class AttentionBlock(nn.Module):
  """x + attention(GroupNorm(x)) over the H*W positions; [B, H, W, C] -> [B, H, W, C]."""
  head_channels: int
  groups: int
  attention_impl: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    heads = max(1, c // self.head_channels)
    if c % heads:
      raise ConfigError(f'model.head_channels={self.head_channels} gives {heads} heads, which do '
                        f'not divide {c} channels')
    y = _group_norm(self.groups, c, self.dtype)(x).reshape(b, h * w, c)  # [B, HW, C]
    y = MultiHeadAttention(num_heads=heads, attention_impl=self.attention_impl,
                           out_init=nn.initializers.zeros, dtype=self.dtype, name='attention')(y)
    return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
  """(x_t [B, H, W, C], t int [B]) -> float32 [B, H, W, out_channels or C]."""
  channels: int = 32  # Of the first level; level i has channels * channel_mults[i].
  channel_mults: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 1
  attention_resolutions: tuple[int, ...] = (7,)  # Spatial sizes (H) with self-attention.
  head_channels: int = 32  # Attention heads: channels // head_channels (at least 1).
  num_groups: int = 8  # GroupNorm groups (Ho et al.: 32, at 128+ channels).
  dropout: float = 0.0
  out_channels: int = 0  # 0: as many as the input.
  attention_impl: str = 'xla'  # models/attention.py
  conv_impl: str = 'auto'  # auto | xla | patches (models/layers.py)
  remat: str = 'none'  # none | full | dots | dots_no_batch (layers.REMAT_POLICIES)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    if not self.channel_mults or min(self.channel_mults) < 1 or self.channels < 1:
      raise ConfigError(f'model.channels={self.channels} and model.channel_mults='
                        f'{self.channel_mults} must be positive (one multiplier per level)')
    if self.num_res_blocks < 1:
      raise ConfigError(f'model.num_res_blocks={self.num_res_blocks} must be >= 1')
    if x.ndim != 4 or t.shape != x.shape[:1]:
      raise ConfigError(f'the U-Net takes images [B, H, W, C] and timesteps [B], not {x.shape} '
                        f'and {t.shape}')
    conv = functools.partial(Conv2D, padding='SAME', impl=self.conv_impl, dtype=self.dtype)
    res_block = layers.remat(ResBlock, self.remat, static_argnums=(3,))  # train
    block = functools.partial(res_block, groups=self.num_groups, dropout=self.dropout, conv=conv,
                              dtype=self.dtype)
    attention = functools.partial(layers.remat(AttentionBlock, self.remat), self.head_channels,
                                  self.num_groups, self.attention_impl, self.dtype)
    emb_dim = 4 * self.channels
    temb = timestep_embedding(t, self.channels)  # [B, c]
    temb = nn.Dense(emb_dim, dtype=self.dtype, name='time_dense0')(temb)
    temb = nn.Dense(emb_dim, dtype=self.dtype, name='time_dense1')(nn.silu(temb))  # [B, 4c]

    h = conv(self.channels, (3, 3), name='conv_in')(x.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_mults):
      for i in range(self.num_res_blocks):
        h = block(self.channels * mult, name=f'down{level}_block{i}')(h, temb, train)
        if h.shape[1] in self.attention_resolutions:
          h = attention(name=f'down{level}_attention{i}')(h)
        skips.append(h)
      if level < len(self.channel_mults) - 1:
        h = conv(h.shape[-1], (3, 3), strides=2, name=f'down{level}_downsample')(h)  # H -> H/2
        skips.append(h)

    h = block(h.shape[-1], name='mid_block0')(h, temb, train)
    h = attention(name='mid_attention')(h)
    h = block(h.shape[-1], name='mid_block1')(h, temb, train)

    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)  # [B, H, W, C + C_skip]
        h = block(self.channels * mult, name=f'up{level}_block{i}')(h, temb, train)
        if h.shape[1] in self.attention_resolutions:
          h = attention(name=f'up{level}_attention{i}')(h)
      if level > 0:  # Nearest upsampling to the skip's size (7 -> 14; 4 -> 7 for odd sizes).
        size = skips[-1].shape[1:3]
        h = jax.image.resize(h, (h.shape[0], *size, h.shape[-1]), 'nearest')
        # To the next level's channels (Ho et al. keep these): the full width at 28x28 would be
        # the costliest conv of the network.
        h = conv(self.channels * self.channel_mults[level - 1], (3, 3),
                 name=f'up{level}_upsample')(h)
    assert not skips

    h = nn.silu(_group_norm(self.num_groups, h.shape[-1], self.dtype, name='norm_out')(h))
    out = conv(self.out_channels or x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros,
               name='conv_out')(h)
    return out.astype(jnp.float32)
