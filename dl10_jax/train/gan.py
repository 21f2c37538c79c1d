"""The GAN objective (DCGAN): two networks, two Adam optimizers, one jitted step.

A step first updates the discriminator D on real images and the generator's samples, then the
generator G on the non-saturating loss -log D(G(z)) against the *updated* D (Goodfellow et al.
2014, sec. 3; D's new weights are what G must fool next). Each network moves only by the gradient
of its own loss. Both losses are computed from logits (`optax.sigmoid_binary_cross_entropy`, a
log-sigmoid): sigmoid-then-log would round a confident D's probability to 0 or 1 and make the
loss inf. Options (`config.gan`): one-sided label smoothing (real target 1 - s; Salimans et al.
2016), an R1 penalty r1_weight / 2 * E|grad_x D(x)|^2 on real images (Mescheder et al. 2018), and
an EMA of G's weights, which samples and eval use (smoother than the weights of the last step).
`grad_clip_norm` clips each network's gradient by its own global norm; `pruning`, dtype=float16 and
`microbatch_size` are refused (one line each), not ignored.

Eval generates as many images as the eval split has and scores them with `classifier_fid`
(train/image_quality.py: this project's Fashion-MNIST classifier, NOT Inception-FID).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dl10_jax.errors import ConfigError
from dl10_jax.train import image_quality, optim
from dl10_jax.train.generative import ImageGenerative
from dl10_jax.train.objective import Batch, Metrics
from dl10_jax.train.state import EMAState

NETS = ('generator', 'discriminator')
# The state is an EMAState whose params, opt_state and model_state hold one entry per network:
# params {'generator': ..., 'discriminator': ...}, opt_state {net: its Adam state}, model_state
# {net: {'batch_stats': ...}}, tx {net: its Adam}; ema_params is the EMA of the generator.


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



def _apply_gradients(state: EMAState, net: str, grads: Any) -> EMAState:
  """`state` with network `net` moved by its own optimizer along `grads` (of its params)."""
  updates, opt_state = state.tx[net].update(grads, state.opt_state[net], state.params[net])
  params = {**state.params, net: optax.apply_updates(state.params[net], updates)}
  return state.replace(params=params, opt_state={**state.opt_state, net: opt_state})


class GAN(ImageGenerative):
  """Batches are {'image': float[B, H, W, C] in [0, 1], ...}; the model is models.gan.DCGAN."""

  section = 'gan'
  loss_metric = 'train_d_loss'

  def __init__(self, config: ml_collections.ConfigDict, model: Any, splits: Any = None):
    if config.optimizer != 'adam':
      raise ConfigError(f'objective=gan trains both networks with Adam (gan.b1, gan.b2), not '
                        f'optimizer={config.optimizer!r}')
    if config.pruning.sparsity:
      raise ConfigError(f'pruning.sparsity={config.pruning.sparsity} is not supported by '
                        'objective=gan; use 0')
    if config.dtype == 'float16':  # Two losses would need two loss scales; bf16 needs none.
      raise ConfigError("dtype='float16' is not supported by objective=gan; use bfloat16 or "
                        'float32')
    if config.microbatch_size:  # Each network's pass sees the whole batch (its BN statistics).
      raise ConfigError(f'microbatch_size={config.microbatch_size} is not supported by '
                        'objective=gan; use 0')
    gan = config.gan
    if not 0 <= gan.label_smoothing < 1 or gan.r1_weight < 0:
      raise ConfigError(f'gan.label_smoothing={gan.label_smoothing} must be in [0, 1), '
                        f'gan.r1_weight={gan.r1_weight} >= 0')
    super().__init__(config, model, splits)
    self._sample = jax.jit(self._sample_fn, static_argnames='num_samples')

  def make_optimizer(self) -> dict[str, optax.GradientTransformation]:
    """One Adam per network (DCGAN: lr 2e-4, b1 0.5), each updating only its own parameters,
    after clipping its own gradient to `grad_clip_norm` (if > 0)."""
    schedule = optim.learning_rate_schedule(self.config)
    clip = self.config.grad_clip_norm
    adam = lambda: optax.adam(schedule, b1=self.config.gan.b1, b2=self.config.gan.b2)
    return {net: optax.chain(optax.clip_by_global_norm(clip), adam()) if clip > 0 else adam()
            for net in NETS}

  # --- The initial state: per network. ---

  def init_args(self, batch: Batch) -> tuple[Any, ...]:
    return (jnp.zeros((2, self.model.latent_dim)),)

  def init_opt_state(self, params: Any) -> Any:
    return {net: self.tx[net].init(params[net]) for net in NETS}

  def init_model_state(self, variables: dict[str, Any]) -> Any:
    return _split(super().init_model_state(variables))

  def ema_source(self, params: Any) -> Any:
    return params['generator']

  def init_state(self, rng: jax.Array, batch: Batch) -> EMAState:
    images = batch['image']  # [B, H, W, C]
    expected = (self.model.image_size, self.model.image_size, self.model.channels)
    if tuple(images.shape[1:]) != expected:
      raise ConfigError(f'model.image_size={expected[0]}, model.channels={expected[2]} make '
                        f'{"x".join(map(str, expected))} images but the data has '
                        f'{"x".join(map(str, images.shape[1:]))}; set them to match the dataset')
    return super().init_state(rng, batch)

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

  def train_step(self, state: EMAState, batch: Batch) -> tuple[EMAState, Metrics]:
    """D's update, then G's against the updated D; BN statistics of each from its own pass."""
    gan = self.config.gan
    d_rng, g_rng = jax.random.split(state.step_rng())
    real = batch['image'] * 2 - 1  # [B, H, W, C]: the data's [0, 1] -> the generator's [-1, 1].
    n = real.shape[0]

    # 1. Discriminator. G's samples are constants here. With reuse_fakes, G's one pass (its BN
    # statistics updated) is kept for G's own update below, as in the PyTorch DCGAN example;
    # otherwise G's statistics stay as they are and G's update draws fresh noise.
    def generate(g_params, rng):
      p = {**state.params, 'generator': g_params}
      return self._apply('generator', p, state.model_state, self._noise(rng, n), True)

    if gan.reuse_fakes:
      fake, g_vjp, g_state = jax.vjp(lambda g: generate(g, d_rng), state.params['generator'],
                                     has_aux=True)
    else:
      fake = generate(state.params['generator'], d_rng)[0]
    fake = jax.lax.stop_gradient(fake)

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
    new = _apply_gradients(state, 'discriminator', d_grads)
    new = new.replace(model_state={**state.model_state, 'discriminator': d_state})

    # 2. Generator, against the updated D (whose BN statistics G's pass leaves as they are).
    def loss_of_images(images):
      fake_logits, _ = self._apply('discriminator', new.params, new.model_state, images, True)
      return generator_loss(fake_logits)

    if gan.reuse_fakes:  # d loss / d images through D, then back through G's kept pass.
      g_loss, image_grads = jax.value_and_grad(loss_of_images)(fake)
      g_grads, = g_vjp(image_grads)
    else:
      def g_loss_fn(g_params):
        images, g_state = generate(g_params, g_rng)
        return loss_of_images(images), g_state

      (g_loss, g_state), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
          state.params['generator'])
    new = _apply_gradients(new, 'generator', g_grads)
    new = new.replace(step=state.step + 1,
                      model_state={**new.model_state, 'generator': g_state})
    metrics.update(train_d_loss=d_loss, train_g_loss=g_loss)
    return self.with_ema(state, new), metrics

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

  def generate(self, state: EMAState, rng: jax.Array, num_samples: int,
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

  def eval_step(self, state: EMAState, batch: Batch) -> Metrics:
    """As many EMA samples as real images; D's view of both, and their feature moments."""
    real = batch['image'] * 2 - 1  # [B, H, W, C]
    mask = batch['mask']
    fake = self.generate(state, self._eval_rng(batch), real.shape[0])
    sums = {'count': mask.sum()}
    for prefix, images in (('real_', real), ('fake_', fake)):
      logits, _ = self._apply('discriminator', state.params, state.model_state, images, False)
      sums[prefix + 'd'] = (jax.nn.sigmoid(logits) * mask).sum()
    return {**sums, **self.quality_sums(real, fake, mask)}

  def summarize_eval(self, sums: dict[str, Any]) -> dict[str, float]:
    return {'eval_d_real': sums['real_d'] / sums['count'],
            'eval_d_fake': sums['fake_d'] / sums['count'], **self.summarize_quality(sums)}
