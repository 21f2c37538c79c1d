"""The feature classifier of the classifier_fid metric (train/image_quality.py): a small CNN on
28x28 grey images, whose 128-d penultimate features the metric compares.

Conv(16)-pool-Conv(32)-pool-Dense(128)-Dense(10). Narrow convolutions: 4x cheaper than 32/64 on
CPU for about the same accuracy. It computes on images in [-1, 1], the range generated images
come in; `unit_inputs` first maps the data pipeline's [0, 1] there, which is how
configs/quality_classifier.py trains it through the shared loop.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.models.layers import Conv2D, max_pool_2x2


class QualityNet(nn.Module):
  """[N, 28, 28, 1] -> logits [N, num_classes]; (features [N, F], logits) with `with_features`."""
  num_classes: int = 10
  num_features: int = 128
  unit_inputs: bool = False  # Inputs in [0, 1] (the data's) rather than [-1, 1].
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               with_features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    if self.unit_inputs:
      x = x * 2 - 1
    for width in (16, 32):  # [N, 28, 28, 1] -> [N, 14, 14, 16] -> [N, 7, 7, 32]
      x = max_pool_2x2(nn.relu(Conv2D(width, (3, 3), padding='SAME', dtype=self.dtype)(x)))
    features = nn.relu(nn.Dense(self.num_features, dtype=self.dtype)(
        x.reshape(x.shape[0], -1)))  # [N, F]
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(features)  # [N, C]
    return (features, logits) if with_features else logits
