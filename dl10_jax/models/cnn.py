"""The baseline CNN: two 3x3 convolutions, a 2x2 max-pool, two dense layers.

Conv(32, 3x3, relu) -> Conv(64, 3x3, relu) -> MaxPool 2x2 -> Flatten -> Dense(128, relu) -> Dense(C),
VALID padding (28x28 -> 26 -> 24 -> 12). Returns logits; the loss lives in the objective
(dl10_jax/train/classification.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.models.layers import Conv2D, max_pool_2x2


class ConvTower(nn.Module):
  """The convolutional feature extractor: [B, 28, 28, 1] -> [B, 12, 12, 64]."""
  conv_features: tuple[int, ...]
  conv_impl: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for features in self.conv_features:
      x = nn.relu(Conv2D(features, (3, 3), impl=self.conv_impl, dtype=self.dtype)(x))
    return max_pool_2x2(x)


class CNN(nn.Module):
  """The baseline CNN; `conv_impl` changes how it runs, never what it computes."""
  num_classes: int = 10
  conv_features: tuple[int, ...] = (32, 64)
  dense_features: int = 128
  conv_impl: str = 'auto'  # auto | xla | patches (see models/layers.py)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # The baseline has no dropout or batch norm.
    x = ConvTower(self.conv_features, self.conv_impl, self.dtype, name='features')(x)
    x = x.reshape(x.shape[0], -1)  # [B, 12 * 12 * 64] for 28x28 inputs.
    x = nn.relu(nn.Dense(self.dense_features, dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)  # [B, num_classes]; the loss is computed in float32.
