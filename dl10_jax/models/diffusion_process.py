"""Gaussian diffusion (Ho et al. 2020): noise schedules, the forward process, the two samplers.

The forward process q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I), ab_t = prod_{s<=t} (1 - b_s),
t = 0..T-1 (0-based: t = 0 is the paper's t = 1). A network predicts from (x_t, t) either the noise
eps, or v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0 (Salimans & Ho 2022), which stays well scaled
at both ends of the schedule; `to_x0_eps` turns either into both.

Samplers (batched, seeded, one `lax.fori_loop` each, so they jit once per shape):
- `ddpm_sample`: ancestral sampling over all T steps. Variance `posterior` (default) is the true
  posterior's b~_t = b_t (1 - ab_{t-1}) / (1 - ab_t), Ho et al.'s "sigma^2 = b~" choice: it is the
  one DDIM with eta = 1 reproduces, and the better one for data concentrated near points; `beta`
  is their other choice, sigma^2 = b_t. No noise is added at the last step (t = 0).
- `ddim_sample` (Song et al. 2021): any number of steps on an evenly spaced subsequence that
  includes T - 1 (so a schedule whose ab_{T-1} is near 0 starts from pure noise), noise scale eta
  (0: deterministic). With eta = 1 over all T steps it is `ddpm_sample` with the posterior
  variance, draw for draw: both take step t's noise from fold_in(key, t).
The predicted x_0 is clipped to [-1, 1] (the data range) at every step, and eps recomputed from
it, as in Ho et al.'s and the DDIM code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dl10_jax.errors import ConfigError, check_choice

SCHEDULES = ('linear', 'cosine')
PREDICTIONS = ('eps', 'v')
VARIANCES = ('posterior', 'beta')
LOSS_WEIGHTINGS = ('uniform', 'min_snr')

# (x_t [B, ...], t int32 [B]) -> the network's output (eps or v), shaped like x_t.
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def linear_betas(num_timesteps: int, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
  """Ho et al.'s schedule: 1e-4 -> 0.02 evenly over T = 1000; scaled by 1000 / T for another T,
  so that ab_{T-1} stays near 0 (Nichol & Dhariwal's rule). float64 [T]."""
  scale = 1000 / num_timesteps
  return np.linspace(scale * start, scale * end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal 2021: ab(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2); betas
  clipped at 0.999 (the last one would be 1: x_T carries no signal at all). float64 [T]."""
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
  return np.clip(1 - f[1:] / f[:-1], 0, max_beta)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The per-step constants, float32 [T] each (computed in float64: at t = 0, 1 - ab_t in float32
  would keep 3 digits, and the last DDPM step would not return x_0 exactly)."""
  betas: jax.Array
  alphas_cumprod: jax.Array  # ab_t.
  alphas_cumprod_prev: jax.Array  # ab_{t-1}, with ab_{-1} = 1.
  posterior_x0: jax.Array  # b_t sqrt(ab_{t-1}) / (1 - ab_t): mu~'s coefficient of x_0 ...
  posterior_xt: jax.Array  # (1 - ab_{t-1}) sqrt(1 - b_t) / (1 - ab_t): ... and of x_t.
  posterior_variance: jax.Array  # b~_t = b_t (1 - ab_{t-1}) / (1 - ab_t); 0 at t = 0.

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def make_schedule(name: str, num_timesteps: int) -> Schedule:
  """The schedule `name` (linear | cosine) over `num_timesteps` steps."""
  check_choice('diffusion.schedule', name, SCHEDULES)
  if num_timesteps < 1:
    raise ConfigError(f'diffusion.num_timesteps={num_timesteps} must be >= 1')
  betas = linear_betas(num_timesteps) if name == 'linear' else cosine_betas(num_timesteps)
  if not (0 < betas.min() and betas.max() < 1):
    raise ConfigError(f'the {name} schedule over {num_timesteps} steps has betas outside (0, 1); '
                      'use more diffusion.num_timesteps')
  alphas_cumprod = np.cumprod(1 - betas)
  prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
  constants = (betas, alphas_cumprod, prev, betas * np.sqrt(prev) / (1 - alphas_cumprod),
               (1 - prev) * np.sqrt(1 - betas) / (1 - alphas_cumprod),
               betas * (1 - prev) / (1 - alphas_cumprod))
  return Schedule(*(jnp.asarray(a, jnp.float32) for a in constants))


def _at(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """values[t] for t [B], shaped [B, 1, ..., 1] to broadcast against [B, ...] of rank `ndim`."""
  return values[t].reshape((-1,) + (1,) * (ndim - 1))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise: a draw of q(x_t | x_0). x0, noise [B, ...]."""
  ab = _at(schedule.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * noise


def target(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array,
           prediction: str) -> jax.Array:
  """What the network learns to output for x_t = q_sample(x0, t, noise): eps, or v."""
  if prediction == 'eps':
    return noise
  ab = _at(schedule.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(ab) * noise - jnp.sqrt(1 - ab) * x0


def loss_weight(schedule: Schedule, t: jax.Array, prediction: str, weighting: str,
                gamma: float = 5.0) -> jax.Array:
  """Per-example weights [B] of the regression loss at timesteps t [B].

  uniform: Ho et al.'s "simple" loss (weight 1). min_snr: Hang et al. 2023 ("Min-SNR-gamma"), the
  x_0-error weight min(SNR_t, gamma) written for the network's output: the eps error is
  SNR times the x_0 error, so its weight is min(SNR, gamma) / SNR; the v error is (SNR + 1)
  times it: min(SNR, gamma) / (SNR + 1). SNR_t = ab_t / (1 - ab_t). It stops the nearly clean
  timesteps (huge SNR), whose gradients conflict with the rest, from dominating: the paper
  reports ~3x faster convergence.
  """
  if weighting == 'uniform':
    return jnp.ones(t.shape, jnp.float32)
  ab = schedule.alphas_cumprod[t]
  snr = ab / (1 - ab)
  if prediction == 'eps':
    return jnp.minimum(1.0, gamma / snr)  # min(SNR, gamma) / SNR; 1 where SNR is 0.
  return jnp.minimum(snr, gamma) / (snr + 1)


def to_x0_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array,
              prediction: str) -> tuple[jax.Array, jax.Array]:
  """(x_0, eps) that the network's `output` at (x_t, t) stands for.

  eps: x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab). v: x_0 = sqrt(ab) x_t - sqrt(1 - ab) v and
  eps = sqrt(1 - ab) x_t + sqrt(ab) v (a rotation, never a division).
  """
  ab = _at(schedule.alphas_cumprod, t, x_t.ndim)
  if prediction == 'eps':
    return (x_t - jnp.sqrt(1 - ab) * output) / jnp.sqrt(ab), output
  return jnp.sqrt(ab) * x_t - jnp.sqrt(1 - ab) * output, jnp.sqrt(1 - ab) * x_t + \
      jnp.sqrt(ab) * output


def _predict(denoise_fn: DenoiseFn, schedule: Schedule, x: jax.Array, t: jax.Array,
             prediction: str, clip: bool) -> tuple[jax.Array, jax.Array]:
  """(x_0, eps) at step t (a scalar) for the whole batch; x_0 clipped and eps made to agree."""
  t_batch = jnp.full((x.shape[0],), t, jnp.int32)
  x0, eps = to_x0_eps(schedule, x, t_batch, denoise_fn(x, t_batch).astype(x.dtype), prediction)
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
    ab = schedule.alphas_cumprod[t]
    eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
  return x0, eps


def ddpm_sample(denoise_fn: DenoiseFn, schedule: Schedule, shape: tuple[int, ...],
                rng: jax.Array, *, prediction: str = 'eps', variance: str = 'posterior',
                clip: bool = True) -> jax.Array:
  """Ancestral sampling over all T steps: float32 `shape` ([B, ...]) from x_{T-1} ~ N(0, I).

  x_{t-1} = mu~(x_t, x_0) + sigma_t z, mu~ = (b_t sqrt(ab_{t-1}) x_0 + (1 - ab_{t-1})
  sqrt(1 - b_t) x_t) / (1 - ab_t), sigma_t^2 = b~_t (posterior) or b_t (beta); z = 0 at t = 0.
  """
  check_choice('prediction', prediction, PREDICTIONS)
  check_choice('variance', variance, VARIANCES)
  init_key, step_key = jax.random.split(rng)
  s, num = schedule, schedule.num_timesteps

  def body(i, x):
    t = num - 1 - i
    x0, _ = _predict(denoise_fn, s, x, t, prediction, clip)
    mean = s.posterior_x0[t] * x0 + s.posterior_xt[t] * x
    var = s.posterior_variance[t] if variance == 'posterior' else s.betas[t]
    z = jax.random.normal(jax.random.fold_in(step_key, t), shape)
    return mean + jnp.where(t > 0, jnp.sqrt(var), 0.0) * z

  return jax.lax.fori_loop(0, num, body, jax.random.normal(init_key, shape))


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` increasing timesteps evenly spaced over [0, T - 1], both ends included."""
  if not 1 <= steps <= num_timesteps:
    raise ConfigError(f'sampling steps={steps} must be in [1, num_timesteps={num_timesteps}]')
  if steps == 1:
    return np.array([num_timesteps - 1])
  ts = np.round(np.linspace(0, num_timesteps - 1, steps)).astype(np.int32)
  assert len(np.unique(ts)) == steps, ts
  return ts


def ddim_sample(denoise_fn: DenoiseFn, schedule: Schedule, shape: tuple[int, ...],
                rng: jax.Array, *, steps: int, eta: float | jax.Array = 0.0,
                prediction: str = 'eps', clip: bool = True) -> jax.Array:
  """DDIM over `steps` timesteps: float32 `shape` ([B, ...]) from x_{T-1} ~ N(0, I).

  From t to the previous kept timestep p: x_p = sqrt(ab_p) x_0 + sqrt(1 - ab_p - sigma^2) eps +
  sigma z, sigma = eta sqrt((1 - ab_p) / (1 - ab_t)) sqrt(1 - ab_t / ab_p); ab_p = 1 after t = 0's
  step, which returns x_0 itself.
  """
  check_choice('prediction', prediction, PREDICTIONS)
  init_key, step_key = jax.random.split(rng)
  s = schedule
  ts = ddim_timesteps(s.num_timesteps, steps)
  current = jnp.asarray(ts[::-1].copy())  # [steps], from T - 1 down.
  ab_all = s.alphas_cumprod
  ab_prev = jnp.asarray(np.concatenate([[1.0], np.asarray(ab_all)[ts[:-1]]])[::-1].copy(),
                        jnp.float32)  # [steps]: ab of the step each one goes to.

  def body(i, x):
    t, ab_p = current[i], ab_prev[i]
    ab = ab_all[t]
    x0, eps = _predict(denoise_fn, s, x, t, prediction, clip)
    sigma = eta * jnp.sqrt((1 - ab_p) / (1 - ab) * (1 - ab / ab_p))
    z = jax.random.normal(jax.random.fold_in(step_key, t), shape)
    direction = jnp.sqrt(jnp.maximum(1 - ab_p - sigma ** 2, 0.0))
    return jnp.sqrt(ab_p) * x0 + direction * eps + sigma * z

  return jax.lax.fori_loop(0, len(ts), body, jax.random.normal(init_key, shape))
