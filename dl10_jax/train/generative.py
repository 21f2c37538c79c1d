"""The image-generative base: what the GAN and diffusion share beyond the loop's contract.

- An EMA of the weights (of all of them, or of the generator: `ema_source`), in `EMAState`,
  updated after every step (`with_ema`), checkpointed with the rest, started from the loaded
  weights by init_from; sampling and eval use it.
- An 8x8 grid of samples at every eval point, always from the same noise.
- The classifier_fid metric (`quality_metric`; train/image_quality.py: this project's
  Fashion-MNIST classifier, NOT Inception-FID): its classifier is loaded before any training, and
  `quality_sums` / `summarize_quality` score as many generated images as real ones per eval batch.

A subclass names its config section (`section`: 'gan', 'diffusion'; its `ema_decay` is read
there) and writes `generate`.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dl10_jax.data import image_grid
from dl10_jax.errors import ConfigError
from dl10_jax.train import image_quality
from dl10_jax.train.objective import Batch, Metrics, Objective
from dl10_jax.train.state import EMAState, ema_update

GRID_SAMPLES = 64  # An 8x8 grid at every eval point, always from the same noise.


class ImageGenerative(Objective):
  """Batches are {'image': float[B, H, W, C] in [0, 1], ...}; samples are in [-1, 1]."""

  samples = 'images'
  section: str  # The config section of the objective's options.
  state_class = EMAState

  def __init__(self, config: ml_collections.ConfigDict, model: Any, splits: Any = None):
    self.ema_decay = config[self.section].ema_decay
    if not 0 <= self.ema_decay < 1:
      raise ConfigError(f'{self.section}.ema_decay={self.ema_decay} must be in [0, 1)')
    super().__init__(config, model, splits)
    # Fails here, before any training, if the metric is on and its classifier is not trained.
    self.classifier = image_quality.load_feature_classifier(
        config.get('quality_classifier_dir') or None) if config.quality_metric else None

  # --- The EMA. ---

  def ema_source(self, params: Any) -> Any:
    """The part of `params` the EMA averages."""
    return params

  def init_state(self, rng: jax.Array, batch: Batch) -> EMAState:
    if self.classifier is not None:
      image_quality.prepare(batch['image'])  # classifier_fid needs 28x28 grey images: fail now.
    state = super().init_state(rng, batch)
    return state.replace(ema_params=jax.tree.map(jnp.copy, self.ema_source(state.params)))

  def load_pretrained(self, state: EMAState, params: Any, model_state: Any) -> EMAState:
    """Another run's weights; the EMA starts from them, not from the fresh initialisation."""
    return state.replace(params=params, model_state=model_state,
                         ema_params=jax.tree.map(jnp.copy, self.ema_source(params)))

  def with_ema(self, old: EMAState, new: EMAState) -> EMAState:
    """`new` with the EMA of `old` moved towards its weights (the ramp counts `old`'s step)."""
    return new.replace(ema_params=ema_update(old.ema_params, self.ema_source(new.params),
                                             self.ema_decay, old.step))

  # --- Samples. ---

  @abc.abstractmethod
  def generate(self, state: EMAState, rng: jax.Array, num_samples: int,
               **sampler_kwargs: Any) -> jax.Array:
    """float32 [num_samples, H, W, C] in [-1, 1] from the EMA weights."""

  def grid_sampler_kwargs(self) -> dict[str, Any]:
    """The sampler options of the eval grid (`generate`'s keyword arguments)."""
    return {}

  def write_eval_artifacts(self, state: EMAState, step: int, workdir: Any, writer: Any) -> None:
    """An 8x8 grid of EMA samples, from the same noise at every eval point."""
    rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 1)
    images = self.generate(state, rng, GRID_SAMPLES, **self.grid_sampler_kwargs())
    image_grid.write_eval_grid(np.asarray(jax.device_get(images)), step, workdir, writer)

  # --- classifier_fid. ---

  def quality_sums(self, real: jax.Array, fake: jax.Array, mask: jax.Array) -> Metrics:
    """The classifier's feature moments of real and generated images [B, H, W, C] in [-1, 1],
    as 'real_*' and 'fake_*' sums ({} without the metric)."""
    sums = {}
    if self.classifier is not None:
      for prefix, images in (('real_', real), ('fake_', fake)):
        quality = image_quality.moment_sums(*self.classifier.features_and_logits(images), mask)
        sums.update({prefix + k: v for k, v in quality.items()})
    return sums

  def summarize_quality(self, sums: dict[str, Any]) -> dict[str, float]:
    """eval_classifier_fid and the others from the eval-set sums ({} without the metric)."""
    if self.classifier is None:
      return {}
    real, fake = ({k[len(p):]: v for k, v in sums.items() if k.startswith(p)}
                  for p in ('real_', 'fake_'))
    return {f'eval_{k}': v for k, v in image_quality.summarize(real, fake).items()}
