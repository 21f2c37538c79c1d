"""Adversarial training (DCGAN): two networks, two Adam optimizers, one jitted step.

A step first updates the discriminator D on real images and the generator's samples, then the
generator G on the non-saturating loss -log D(G(z)) against the *updated* D (Goodfellow et al.
2014, sec. 3; D's new weights are what G must fool next). Each network moves only by the gradient
of its own loss. Both losses are computed from logits (`optax.sigmoid_binary_cross_entropy`, a
log-sigmoid): sigmoid-then-log would round a confident D's probability to 0 or 1 and make the
loss inf. Options (`config.gan`): one-sided label smoothing (real target 1 - s; Salimans et al.
2016), an R1 penalty r1_weight / 2 * E|grad_x D(x)|^2 on real images (Mescheder et al. 2018), and
an EMA of G's weights, which samples and eval use (smoother than the weights of the last step).

Eval generates as many images as the eval split has and scores them with `classifier_fid`
(train/image_quality.py: this project's Fashion-MNIST classifier, NOT Inception-FID).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dl10_jax.data import image_grid
from dl10_jax.errors import ConfigError
from dl10_jax.train import image_quality, optim
from dl10_jax.train.objective import Batch, Metrics, Objective
from dl10_jax.train.state import ema_update

NETS = ('generator', 'discriminator')
GRID_SAMPLES = 64  # An 8x8 grid at every eval point, always from the same noise.


@flax.struct.dataclass
class GANState:
  step: jax.Array  # int32 scalar: the number of (D, G) updates applied so far.
  params: Any  # {'generator': ..., 'discriminator': ...}
  opt_state: Any  # {'generator': ..., 'discriminator': ...}: one Adam state each.
  model_state: Any  # {'generator': {'batch_stats': ...}, 'discriminator': {'batch_stats': ...}}
  ema_params: Any  # The EMA of params['generator'].
  rng: jax.Array  # Base key; step t uses fold_in(rng, t), so resuming needs no RNG replay.

  def step_rng(self) -> jax.Array:
    return jax.random.fold_in(self.rng, self.step)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array,
                       smoothing: float = 0.0) -> jax.Array:
  """-log D(x) - log(1 - D(G(z))), with real targets 1 - smoothing; logits [B]."""
  real = optax.sigmoid_binary_cross_entropy(real_logits, jnp.full_like(real_logits, 1 - smoothing))
  fake = optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits))
  return real.mean() + fake.mean()


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating -log D(G(z)): strong gradients exactly when D rejects the samples."""
  return optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)).mean()


def _split(collections: dict[str, Any]) -> dict[str, Any]:
  """flax collections {'batch_stats': {'generator': ...}} -> {'generator': {'batch_stats': ...}}."""
  return {net: {k: v[net] for k, v in collections.items() if net in v} for net in NETS}


def _variables(params: Any, model_state: dict[str, Any]) -> dict[str, Any]:
  """The DCGAN's flax variables from per-network params and model state (the inverse of _split)."""
  variables = {'params': params}
  for net, collections in model_state.items():
    for k, v in collections.items():
      variables.setdefault(k, {})[net] = v
  return variables


class Adversarial(Objective):
  """Batches are {'image': float[B, H, W, C] in [0, 1], ...}; the model is models.gan.DCGAN."""

  loss_metric = 'train_d_loss'

  def __init__(self, config: ml_collections.ConfigDict, model: Any, splits: Any = None):
    if config.optimizer != 'adam':
      raise ConfigError(f'objective=gan trains both networks with Adam (gan.b1, gan.b2), not '
                        f'optimizer={config.optimizer!r}')
    gan = config.gan
    if not 0 <= gan.label_smoothing < 1 or gan.r1_weight < 0 or not 0 <= gan.ema_decay < 1:
      raise ConfigError(f'gan.label_smoothing={gan.label_smoothing} must be in [0, 1), '
                        f'gan.r1_weight={gan.r1_weight} >= 0, gan.ema_decay={gan.ema_decay} in '
                        '[0, 1)')
    super().__init__(config, model, splits)
    # Fails here, before any training, if the metric is on and its classifier is not trained.
    self.classifier = image_quality.load_feature_classifier(
        config.quality_classifier_dir or None) if config.quality_metric else None
    self._sample = jax.jit(self._sample_fn, static_argnames='num_samples')

  def make_optimizer(self) -> dict[str, optax.GradientTransformation]:
    """One Adam per network (DCGAN: lr 2e-4, b1 0.5), each updating only its own parameters."""
    schedule = optim.learning_rate_schedule(self.config)
    return {net: optax.adam(schedule, b1=self.config.gan.b1, b2=self.config.gan.b2)
            for net in NETS}

  def model_inputs(self, batch: Batch) -> jax.Array:
    return batch['image']

  def loss(self, params: Any, state: Any, batch: Batch, rng: jax.Array) -> Any:
    raise NotImplementedError('a GAN has two losses, both in train_step')

  def init_state(self, rng: jax.Array, batch: Batch) -> GANState:
    init_rng, state_rng = jax.random.split(rng)
    images = batch['image']  # [B, H, W, C]
    expected = (self.model.image_size, self.model.image_size, self.model.channels)
    if tuple(images.shape[1:]) != expected:
      raise ConfigError(f'model.image_size={expected[0]}, model.channels={expected[2]} make '
                        f'{"x".join(map(str, expected))} images but the data has '
                        f'{"x".join(map(str, images.shape[1:]))}; set them to match the dataset')
    if self.classifier is not None:
      image_quality.prepare(images)  # classifier_fid needs 28x28 grey images: fail now.
    variables = dict(self.model.init(init_rng, jnp.zeros((2, self.model.latent_dim)), train=False))
    params = variables.pop('params')
    return GANState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state={net: self.tx[net].init(params[net]) for net in NETS},
                    model_state=_split(variables),
                    ema_params=jax.tree.map(jnp.copy, params['generator']), rng=state_rng)

  def load_pretrained(self, state: GANState, params: Any, model_state: Any) -> GANState:
    """Another run's networks; the EMA starts from the loaded generator, not the fresh one."""
    return state.replace(params=params, model_state=model_state,
                         ema_params=jax.tree.map(jnp.copy, params['generator']))

  # --- The networks in one place: (output, the network's updated model state). ---

  def _apply(self, net: str, params: Any, model_state: Any, x: jax.Array,
             train: bool) -> tuple[jax.Array, Any]:
    method = self.model.generate if net == 'generator' else self.model.discriminate
    variables = _variables(params, model_state)
    if not train:
      return self.model.apply(variables, x, method=method), model_state[net]
    out, mutated = self.model.apply(variables, x, train=True, method=method,
                                    mutable=list(model_state[net]))
    return out, _split(dict(mutated))[net]

  def _noise(self, rng: jax.Array, n: int) -> jax.Array:
    # Drawn flat: a 2-D draw of the partitionable threefry compiles several times slower on CPU.
    return jax.random.normal(rng, (n * self.model.latent_dim,)).reshape(n, -1)  # [n, latent_dim]

  def train_step(self, state: GANState, batch: Batch) -> tuple[GANState, Metrics]:
    """D's update, then G's against the updated D; BN statistics of each from its own pass."""
    gan = self.config.gan
    d_rng, g_rng = jax.random.split(state.step_rng())
    real = batch['image'] * 2 - 1  # [B, H, W, C]: the data's [0, 1] -> the generator's [-1, 1].
    n = real.shape[0]

    # 1. Discriminator. G's samples are constants here, and G's BN statistics stay as they are.
    fake = jax.lax.stop_gradient(
        self._apply('generator', state.params, state.model_state, self._noise(d_rng, n), True)[0])

    def d_loss_fn(d_params):
      params = {**state.params, 'discriminator': d_params}
      # Real and fake in separate passes, so that BN never mixes their statistics (as in DCGAN).
      real_logits, d_state = self._apply('discriminator', params, state.model_state, real, True)
      fake_logits, d_state = self._apply(
          'discriminator', params, {**state.model_state, 'discriminator': d_state}, fake, True)
      loss = discriminator_loss(real_logits, fake_logits, gan.label_smoothing)
      metrics = {'train_d_real': jax.nn.sigmoid(real_logits).mean(),  # D(x): 1 is "real"
                 'train_d_fake': jax.nn.sigmoid(fake_logits).mean()}  # D(G(z)) before the update
      if gan.r1_weight:
        score = lambda x: self._apply('discriminator', params, state.model_state, x, True)[0].sum()
        r1 = jnp.square(jax.grad(score)(real)).sum(axis=(1, 2, 3)).mean()
        metrics.update(train_d_adversarial_loss=loss, train_r1=r1)
        loss = loss + gan.r1_weight / 2 * r1
      return loss, (metrics, d_state)

    (d_loss, (metrics, d_state)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        state.params['discriminator'])
    d_updates, d_opt = self.tx['discriminator'].update(
        d_grads, state.opt_state['discriminator'], state.params['discriminator'])
    params = {**state.params,
              'discriminator': optax.apply_updates(state.params['discriminator'], d_updates)}
    model_state = {**state.model_state, 'discriminator': d_state}

    # 2. Generator, against the updated D (whose BN statistics G's pass leaves as they are).
    def g_loss_fn(g_params):
      p = {**params, 'generator': g_params}
      images, g_state = self._apply('generator', p, model_state, self._noise(g_rng, n), True)
      fake_logits, _ = self._apply('discriminator', p, model_state, images, True)
      return generator_loss(fake_logits), g_state

    (g_loss, g_state), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(params['generator'])
    g_updates, g_opt = self.tx['generator'].update(
        g_grads, state.opt_state['generator'], params['generator'])
    params['generator'] = optax.apply_updates(params['generator'], g_updates)

    metrics.update(train_d_loss=d_loss, train_g_loss=g_loss)
    return state.replace(
        step=state.step + 1, params=params,
        opt_state={'generator': g_opt, 'discriminator': d_opt},
        model_state={**model_state, 'generator': g_state},
        ema_params=ema_update(state.ema_params, params['generator'], gan.ema_decay, state.step),
    ), metrics

  # --- Sampling and eval. ---

  def _sample_fn(self, ema_params: Any, model_state: Any, rng: jax.Array,
                 num_samples: int) -> jax.Array:
    params = {'generator': ema_params}
    # By default with the batch's own BN statistics, as the reference DCGAN samples (its
    # generator is never put in eval mode): running averages lag behind a generator that changes
    # every step, and were collected with other weights than the EMA's.
    images, _ = self._apply('generator', params, {'generator': model_state['generator']},
                            self._noise(rng, num_samples), self.config.gan.sample_batch_stats)
    return images

  def generate(self, state: GANState, rng: jax.Array, num_samples: int,
               **sampler_kwargs: Any) -> jax.Array:
    """float32 [num_samples, H, W, C] in [-1, 1] from the EMA generator (jittable)."""
    if sampler_kwargs:
      raise ConfigError(f'a GAN samples in one pass; it takes no sampler options '
                        f'({", ".join(sorted(sampler_kwargs))})')
    return self._sample(state.ema_params, state.model_state, rng, num_samples=num_samples)

  def _eval_rng(self, batch: Batch) -> jax.Array:
    """A key per eval batch, the same at every eval: the batches carry no index, so it hashes
    their pixels (any collision would only repeat some noise)."""
    hashes = image_quality.pixel_hashes(batch['image'])  # [B]
    position = jnp.arange(1, hashes.shape[0] + 1, dtype=jnp.uint32)
    return jax.random.fold_in(jax.random.PRNGKey(self.config.seed), (hashes * position).sum())

  def eval_step(self, state: GANState, batch: Batch) -> Metrics:
    """As many EMA samples as real images; D's view of both, and their feature moments."""
    real = batch['image'] * 2 - 1  # [B, H, W, C]
    mask = batch['mask']
    fake = self.generate(state, self._eval_rng(batch), real.shape[0])
    sums = {'count': mask.sum()}
    for prefix, images in (('real_', real), ('fake_', fake)):
      logits, _ = self._apply('discriminator', state.params, state.model_state, images, False)
      sums[prefix + 'd'] = (jax.nn.sigmoid(logits) * mask).sum()
      if self.classifier is not None:
        quality = image_quality.moment_sums(*self.classifier.features_and_logits(images), mask)
        sums.update({prefix + k: v for k, v in quality.items()})
    return sums

  def summarize_eval(self, sums: dict[str, Any]) -> dict[str, float]:
    metrics = {'eval_d_real': sums['real_d'] / sums['count'],
               'eval_d_fake': sums['fake_d'] / sums['count']}
    if self.classifier is not None:
      real, fake = ({k[len(p):]: v for k, v in sums.items() if k.startswith(p)}
                    for p in ('real_', 'fake_'))
      metrics.update({f'eval_{k}': v for k, v in image_quality.summarize(real, fake).items()})
    return metrics

  def write_eval_artifacts(self, state: GANState, step: int, workdir: Any, writer: Any) -> None:
    """An 8x8 grid of EMA samples, from the same noise at every eval point."""
    rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 1)
    images = np.asarray(jax.device_get(self.generate(state, rng, GRID_SAMPLES)))
    image_grid.write_eval_grid(images, step, workdir, writer)
