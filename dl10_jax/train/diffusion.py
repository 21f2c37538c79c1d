"""Denoising diffusion (Ho et al. 2020): the noise-prediction MSE, an EMA of the weights, samples.

A training step draws t uniformly from {0..T-1} and noise per image, forms x_t = q_sample(x_0, t,
noise) and regresses the network's output on eps (Ho et al.'s "simple" loss) or on v (Salimans &
Ho 2022; `diffusion.prediction`), optionally weighted per timestep by Min-SNR-gamma
(`diffusion.loss_weighting`; the eval loss stays unweighted, so runs with either compare).
Images enter at their native size in [-1, 1] (the data gives [0, 1]): Fashion-MNIST stays 28x28
(the U-Net runs 28 -> 14 -> 7, attention at 7x7), CIFAR-10 32x32. The state is an EMAState
(train/generative.py): the eval loss, every sample and the quality metric use the EMA of the
weights. Loss terms the model sows (objective.sown_loss) are added, REINFORCE rewarded by -error.

Eval is deterministic: each example's t and noise come from a key hashed from its own pixels (the
batches carry no index), so the eval loss does not depend on the batch size or device count. With
`quality_metric`, each eval batch is also sampled with DDIM (`diffusion.eval_sampler`, `eval_steps`,
`eval_eta`), one image per real one, and both are scored with classifier_fid
(train/image_quality.py: this project's Fashion-MNIST classifier, NOT Inception-FID).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.models import diffusion_process as process
from dl10_jax.train import image_quality
from dl10_jax.train.generative import ImageGenerative
from dl10_jax.train.objective import Batch, Metrics, with_sown_loss
from dl10_jax.train.state import EMAState
from dl10_jax.train.supervised import Supervised

SAMPLERS = ('ddpm', 'ddim')


class Diffusion(ImageGenerative, Supervised):
  """Batches are {'image': float[B, H, W, C] in [0, 1], ...}; the model is models.unet.UNet."""

  section = 'diffusion'

  def __init__(self, config: ml_collections.ConfigDict, model: Any, splits: Any = None):
    d = config.diffusion
    check_choice('diffusion.prediction', d.prediction, process.PREDICTIONS)
    check_choice('diffusion.eval_sampler', d.eval_sampler, SAMPLERS)
    # Runs saved before the option trained with the uniform loss.
    self.loss_weighting = d.get('loss_weighting', 'uniform')
    self.min_snr_gamma = d.get('min_snr_gamma', 5.0)
    check_choice('diffusion.loss_weighting', self.loss_weighting, process.LOSS_WEIGHTINGS)
    if not self.min_snr_gamma > 0:
      raise ConfigError(f'diffusion.min_snr_gamma={self.min_snr_gamma} must be > 0')
    self.schedule = process.make_schedule(d.schedule, d.num_timesteps)
    process.ddim_timesteps(d.num_timesteps, d.eval_steps)  # Checks eval_steps now.
    super().__init__(config, model, splits)
    self._sample = jax.jit(self._sample_fn,
                           static_argnames=('shape', 'sampler', 'steps', 'variance'))

  def model_inputs(self, batch: Batch) -> jax.Array:
    return batch['image'] * 2 - 1  # [B, H, W, C]: the data's [0, 1] -> [-1, 1].

  def init_args(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
    x = self.model_inputs(batch)
    return x, jnp.zeros(x.shape[:1], jnp.int32)  # (x_t, t)

  # --- Training. ---

  def _noised(self, x0: jax.Array, t: jax.Array,
              noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x_t, the network's regression target) for x0, t [B], noise."""
    prediction = self.config.diffusion.prediction
    return (process.q_sample(self.schedule, x0, t, noise),
            process.target(self.schedule, x0, t, noise, prediction))

  def loss(self, params: Any, state: EMAState, batch: Batch,
           rng: jax.Array) -> tuple[jax.Array, tuple[Metrics, Any]]:
    x0 = self.model_inputs(batch)  # [B, H, W, C]
    t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    t = jax.random.randint(t_rng, x0.shape[:1], 0, self.schedule.num_timesteps)  # [B]
    x_t, target = self._noised(x0, t, jax.random.normal(noise_rng, x0.shape))
    out, model_state, sown = self.apply_train(params, state, x_t, dropout_rng, t)
    weight = process.loss_weight(self.schedule, t, self.config.diffusion.prediction,
                                 self.loss_weighting, self.min_snr_gamma)  # [B]
    error = weight * jnp.mean(jnp.square(out - target), axis=(1, 2, 3))  # [B]
    loss = jnp.mean(error)
    loss, metrics = with_sown_loss(loss, {'train_loss': loss}, sown, -error)
    return loss, (metrics, model_state)

  def train_step(self, state: EMAState, batch: Batch) -> tuple[EMAState, Metrics]:
    """The shared update (micro-batches and all), then the EMA of the new weights."""
    new_state, metrics = super().train_step(state, batch)
    return self.with_ema(state, new_state), metrics

  # --- Sampling. ---

  def _sample_fn(self, params: Any, model_state: Any, rng: jax.Array, eta: jax.Array, *,
                 shape: tuple[int, ...], sampler: str, steps: int, variance: str) -> jax.Array:
    variables = {'params': params, **model_state}
    denoise = functools.partial(self.model.apply, variables, train=False)
    prediction = self.config.diffusion.prediction
    if sampler == 'ddpm':
      return process.ddpm_sample(denoise, self.schedule, shape, rng, prediction=prediction,
                                 variance=variance)
    return process.ddim_sample(denoise, self.schedule, shape, rng, steps=steps, eta=eta,
                               prediction=prediction)

  def image_shape(self) -> tuple[int, ...]:
    """[H, W, C] of the data's images (what `generate` makes)."""
    if self.splits is None:
      raise ConfigError('the diffusion objective needs its data splits to know the image shape')
    return tuple(np.shape(self.splits.eval[0]['image']))

  def generate(self, state: EMAState, rng: jax.Array, num_samples: int,
               sampler: str = 'ddim', steps: int = 50, eta: float = 0.0,
               variance: str = 'posterior') -> jax.Array:
    """float32 [num_samples, H, W, C] in [-1, 1] from the EMA weights.

    sampler: ddim (`steps` of the T, noise scale `eta`) or ddpm (ancestral over all T steps,
    `variance` posterior | beta; `steps` and `eta` do not apply).
    """
    check_choice('sampler', sampler, SAMPLERS)
    check_choice('variance', variance, process.VARIANCES)
    if sampler == 'ddim':
      process.ddim_timesteps(self.schedule.num_timesteps, steps)  # The one-line range check.
      if eta < 0:
        raise ConfigError(f'eta={eta} must be >= 0')
    else:
      steps, eta = self.schedule.num_timesteps, 0.0  # One compilation whatever was passed.
    return self._sample(state.ema_params, state.model_state, rng, jnp.float32(eta),
                        shape=(num_samples,) + self.image_shape(), sampler=sampler, steps=steps,
                        variance=variance)

  def grid_sampler_kwargs(self) -> dict[str, Any]:
    d = self.config.diffusion
    return {'sampler': d.eval_sampler, 'steps': d.eval_steps, 'eta': d.eval_eta}

  # --- Eval. ---

  def eval_step(self, state: EMAState, batch: Batch) -> Metrics:
    """Sums over unmasked rows of the EMA model's loss at seeded (t, noise); with the quality
    metric, the feature moments of the real images and of as many DDIM samples."""
    x0 = self.model_inputs(batch)  # [B, H, W, C]
    mask = batch['mask']  # [B]
    hashes = image_quality.pixel_hashes(batch['image'])
    base = jax.random.PRNGKey(self.config.seed)
    keys = jax.vmap(lambda h: jax.random.fold_in(base, h))(hashes)  # [B] keys, one per image.
    t = jax.vmap(lambda k: jax.random.randint(k, (), 0, self.schedule.num_timesteps))(keys)
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), x0.shape[1:]))(keys)
    x_t, target = self._noised(x0, t, noise)
    out = state.apply_fn({'params': state.ema_params, **state.model_state}, x_t, t, train=False)
    per_example = jnp.mean(jnp.square(out - target), axis=(1, 2, 3))  # [B]
    sums = {'loss': (per_example * mask).sum(), 'count': mask.sum()}
    if self.classifier is not None:
      d = self.config.diffusion
      rng = jax.random.fold_in(base, (hashes * mask.astype(jnp.uint32)).sum())
      fake = self._sample_fn(state.ema_params, state.model_state, rng, jnp.float32(d.eval_eta),
                             shape=x0.shape, sampler=d.eval_sampler, steps=d.eval_steps,
                             variance='posterior')
      sums.update(self.quality_sums(x0, fake, mask))
    return sums

  def summarize_eval(self, sums: dict[str, Any]) -> dict[str, float]:
    return {'eval_loss': sums['loss'] / sums['count'], **self.summarize_quality(sums)}
