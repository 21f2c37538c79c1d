"""Soft vs hard attention on translated images: attend to where the object is.

A small CNN turns the canvas into a grid of feature vectors (60x60 -> 15x15 x 64: conv 32 5x5/2,
conv 64 5x5/2, conv 64 3x3), a learned query attends over the grid locations, and a classifier reads
the one pooled vector. `attention` picks how the grid is pooled (hard_attention.ATTENTIONS):
`soft` weights every location by softmax(additive scores); `reinforce`, `gumbel` and `topk` select
`k` locations and average them. Nothing else changes between them, so the comparison is of the
attention alone. The weights are sown as 'intermediates' / 'attention_weights' [B, 1, 1, H*W] for
plots.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.models import hard_attention


class AttentionClassifier(nn.Module):
  """Images [B, H, W, C] -> logits [B, num_classes] through one attention-pooled grid vector."""
  num_classes: int = 10
  attention: str = 'soft'  # soft | reinforce | gumbel | topk
  score: str = 'additive'  # dot | additive
  k: int = 1  # Locations a hard attention selects.
  conv_features: tuple[int, ...] = (32, 64, 64)
  width: int = 64  # Of queries, keys and values.
  hidden: int = 128
  # reinforce: the entropy bonus. gumbel: tau from temperature to temperature_end over
  # anneal_steps. topk: straight_through | perturbed (Gaussian sigma, samples).
  entropy_coef: float = 0.01
  temperature: float = 1.0
  temperature_end: float = 0.1
  anneal_steps: int = 1000
  topk_estimator: str = 'straight_through'
  perturb_sigma: float = 0.5
  num_perturbations: int = 8
  dtype: Any = jnp.float32

  uses_step = True  # The objective passes the training step (the Gumbel temperature schedule).

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               step: jax.Array | None = None) -> jax.Array:
    x = images.astype(self.dtype)
    kernels, strides = ((5, 5), (5, 5), (3, 3)), (2, 2, 1)
    for i, features in enumerate(self.conv_features):
      x = nn.relu(nn.Conv(features, kernels[min(i, 2)], strides=strides[min(i, 2)],
                          padding='SAME', dtype=self.dtype, name=f'conv{i}')(x))
    b, h, w, c = x.shape
    grid = x.reshape(b, h * w, c)  # [B, L, C]: one feature vector per location.
    query = self.param('query', nn.initializers.normal(1.0), (1, 1, self.width))
    query = jnp.broadcast_to(query, (b, 1, self.width)).astype(self.dtype)
    attend = hard_attention.make(
        self.attention, num_heads=1, head_dim=self.width, score=self.score, k=self.k,
        entropy_coef=self.entropy_coef, temperature=self.temperature,
        temperature_end=self.temperature_end, anneal_steps=self.anneal_steps,
        topk_estimator=self.topk_estimator, perturb_sigma=self.perturb_sigma,
        num_perturbations=self.num_perturbations, dtype=self.dtype, name='attention')
    pooled, weights = attend(query, grid, train=train, step=step, return_weights=True)
    self.sow('intermediates', 'attention_weights', weights)
    y = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(pooled[:, 0]))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(y).astype(jnp.float32)
