"""Hard attention: select k of the inputs instead of weighting all of them.

A selection is not differentiable, so each kind trains it another way:

- `reinforce` (Williams 1992; Mnih et al. 2014): sample k keys from softmax(scores); the objective
  adds the score-function surrogate -(r - b) log p with a learned baseline b (regressed on the
  reward r) and an entropy bonus. The module sows `log_prob` and `baseline` into the 'policy'
  collection and the bonus into 'losses' (train/objective.py: `sown_loss`).
- `gumbel` (Jang et al. 2017): k Gumbel-max draws, one-hot forward, the gradient of
  softmax((scores + g) / tau) backward (straight-through), tau annealed over training steps.
- `topk`: the k best scores, one-hot forward; backward either straight through the softmax or,
  `perturbed`, the Monte-Carlo gradient of E[topk(scores + sigma Z)] (Berthet et al. 2020).

Each is `attention.MultiHeadAttention` with another `normalize`: the same call signature, so a
config swaps `soft` for a hard kind with one field (`make`). Weights are k-hot / k: the output is
the mean of the selected values. Outside training every hard kind takes the k best scores.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError, check_choice
from dl10_jax.models.attention import MultiHeadAttention

TOPK_ESTIMATORS = ('straight_through', 'perturbed')


def topk_mask(scores: jax.Array, k: int) -> jax.Array:
  """1.0 at the k largest scores of the last axis (exactly k ones), else 0.0: [..., N]."""
  _, idx = jax.lax.top_k(scores, k)
  return jax.nn.one_hot(idx, scores.shape[-1], dtype=jnp.float32).sum(axis=-2)


def straight_through(hard: jax.Array, soft: jax.Array) -> jax.Array:
  """`hard` forward (exactly), the gradient of `soft` backward."""
  return hard + (soft - jax.lax.stop_gradient(soft))


def sample_categorical(rng: jax.Array, scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """k draws (with replacement) from softmax(scores [..., N]).

  Returns the selection weights [..., N] (counts / k, no gradient) and log p of the draws [...].
  """
  draws = jax.random.categorical(rng, scores, axis=-1, shape=(k,) + scores.shape[:-1])  # [k, ...]
  log_p = jax.nn.log_softmax(scores, axis=-1)
  one_hot = jax.nn.one_hot(draws, scores.shape[-1], dtype=jnp.float32)  # [k, ..., N]
  log_prob = (one_hot * log_p[None]).sum(axis=(0, -1))
  return one_hot.mean(axis=0), log_prob


def gumbel_softmax_st(rng: jax.Array, scores: jax.Array, k: int,
                      temperature: jax.Array | float) -> jax.Array:
  """Mean of k straight-through Gumbel-softmax draws over the last axis of scores [..., N]."""
  g = jax.random.gumbel(rng, (k,) + scores.shape, jnp.float32)
  perturbed = jnp.maximum(scores[None] + g, -1e30)  # Masked keys stay finite after / temperature.
  soft = jax.nn.softmax(perturbed / temperature, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(perturbed, axis=-1), scores.shape[-1], dtype=jnp.float32)
  return straight_through(hard, soft).mean(axis=0)


def gumbel_temperature(step: jax.Array | int | None, start: float, end: float,
                       anneal_steps: int) -> jax.Array:
  """start -> end geometrically over anneal_steps, then end (Jang et al.'s exponential decay)."""
  if step is None:
    return jnp.asarray(start, jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(anneal_steps, 1), 0.0, 1.0)
  return start * (end / start) ** frac


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _perturbed_topk(scores, noise, k, sigma):
  return topk_mask(scores[None] + sigma * noise, k).mean(axis=0)


def _perturbed_topk_fwd(scores, noise, k, sigma):
  masks = topk_mask(scores[None] + sigma * noise, k)  # [n, ..., N]
  return masks.mean(axis=0), (masks, noise)


def _perturbed_topk_bwd(k, sigma, residuals, g):
  masks, noise = residuals
  # d E[topk(s + sigma Z)] / ds = E[topk(s + sigma Z) Z^T] / sigma (Gaussian integration by parts).
  grad = ((masks * g[None]).sum(axis=-1, keepdims=True) * noise).mean(axis=0) / sigma
  return grad, jnp.zeros_like(noise)


_perturbed_topk.defvjp(_perturbed_topk_fwd, _perturbed_topk_bwd)


def perturbed_topk(rng: jax.Array, scores: jax.Array, k: int, sigma: float,
                   num_samples: int) -> jax.Array:
  """E[topk_mask(scores + sigma Z)] over num_samples Gaussian draws; its gradient by Monte Carlo."""
  noise = jax.random.normal(rng, (num_samples,) + scores.shape, jnp.float32)
  return _perturbed_topk(jnp.maximum(scores, -1e30), noise, k, sigma)


class HardAttention(MultiHeadAttention):
  """Base: the k best scores outside training; subclasses choose how training selects."""
  k: int = 1
  softmax_weights = False

  def normalize(self, scores, q, k, *, train, step):
    if not 1 <= self.k <= scores.shape[-1]:
      raise ConfigError(f'model.k={self.k} must be in [1, {scores.shape[-1]}] (the number of keys)')
    if not train:
      return topk_mask(scores, self.k) / self.k
    return self.select(scores, q, k, step)

  def select(self, scores: jax.Array, q: jax.Array, k: jax.Array,
             step: jax.Array | None) -> jax.Array:
    """Training-time weights [B, H, Tq, Tk]; here the k best, which pass no gradient to scores."""
    del q, k, step
    return topk_mask(scores, self.k) / self.k


class ReinforceAttention(HardAttention):
  """Samples k keys per query and head; sows what the objective's REINFORCE terms need."""
  entropy_coef: float = 0.01

  def normalize(self, scores, q, k, *, train, step):
    # The baseline exists in every mode, so its parameters are created at init (train=False).
    # It predicts the reward from the queries and keys, without steering their gradients.
    features = jax.lax.stop_gradient(jnp.concatenate(
        [q.mean(axis=1).reshape(q.shape[0], -1), k.mean(axis=1).reshape(k.shape[0], -1)], -1))
    baseline = nn.Dense(1, kernel_init=nn.initializers.zeros, name='baseline_net')(
        features.astype(jnp.float32))[:, 0]  # [B]
    if not train:
      return super().normalize(scores, q, k, train=train, step=step)
    weights, log_prob = sample_categorical(self.make_rng('sample'), scores, self.k)
    p = jax.nn.softmax(scores, axis=-1)
    entropy = -(p * jax.nn.log_softmax(scores, axis=-1)).sum(axis=-1)  # [B, H, Tq]
    self.sow('policy', 'log_prob', log_prob.sum(axis=(1, 2)))  # [B]: all of an example's draws.
    self.sow('policy', 'baseline', baseline)
    self.sow('losses', 'entropy_bonus', -self.entropy_coef * entropy.sum(axis=(1, 2)).mean())
    return weights


class GumbelAttention(HardAttention):
  """k straight-through Gumbel-softmax draws; the temperature follows the training step."""
  temperature: float = 1.0
  temperature_end: float = 0.1
  anneal_steps: int = 1000

  def select(self, scores, q, k, step):
    if not 0 < self.temperature_end <= self.temperature:
      raise ConfigError(f'model.temperature_end={self.temperature_end} must be in (0, '
                        f'model.temperature={self.temperature}]')
    tau = gumbel_temperature(step, self.temperature, self.temperature_end, self.anneal_steps)
    self.sow('intermediates', 'temperature', tau)
    return gumbel_softmax_st(self.make_rng('sample'), scores, self.k, tau)


class TopKAttention(HardAttention):
  """The k best scores; gradient straight through the softmax, or of a perturbed top-k."""
  topk_estimator: str = 'straight_through'
  perturb_sigma: float = 0.5
  num_perturbations: int = 8

  def select(self, scores, q, k, step):
    check_choice('model.topk_estimator', self.topk_estimator, TOPK_ESTIMATORS)
    if self.topk_estimator == 'perturbed':
      return perturbed_topk(self.make_rng('sample'), scores, self.k, self.perturb_sigma,
                            self.num_perturbations) / self.k
    return straight_through(topk_mask(scores, self.k) / self.k, jax.nn.softmax(scores, axis=-1))


ATTENTIONS: dict[str, type[MultiHeadAttention]] = {
    'soft': MultiHeadAttention,
    'reinforce': ReinforceAttention,
    'gumbel': GumbelAttention,
    'topk': TopKAttention,
}


def make(kind: str, **options: Any) -> MultiHeadAttention:
  """The attention module `kind` with the options it has (others belong to other kinds)."""
  if kind not in ATTENTIONS:
    raise ConfigError(f'model.attention={kind!r} is unknown; allowed: {", ".join(ATTENTIONS)}')
  cls = ATTENTIONS[kind]
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in options.items() if k in fields})
