"""Diffusion: the U-Net's shapes, the schedules and the forward process in closed form, the
samplers against an exact denoiser for Gaussian data, the EMA, and training through main (resume
after SIGKILL, then the sample CLI)."""

import json
import subprocess
import sys
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import ROOT, metric_events, run_until_killed, this_process_cache_env
from configs import diffusion as diffusion_config
from dl10_jax.errors import ConfigError
from dl10_jax import models
from dl10_jax.models import diffusion_process as diffusion
from dl10_jax.models.unet import UNet, timestep_embedding
from dl10_jax.train import image_quality, sharding
from dl10_jax.train.experiment import build_experiment, evaluate, restore_run
from dl10_jax.train.trainer import train_and_evaluate


# --- The U-Net. ---

@pytest.mark.parametrize('hw,channels,mults,attention', [(28, 1, (1, 2, 2), (7,)),
                                                         (32, 3, (1, 2, 2), (8,)),
                                                         (28, 1, (1, 2, 2, 2), (4,))])
def test_unet_maps_images_to_images(hw, channels, mults, attention):
  """28 -> 14 -> 7 (-> 4: odd sizes resize back to the skip's size) and 32 -> 16 -> 8."""
  model = UNet(channels=8, channel_mults=mults, attention_resolutions=attention, head_channels=8,
               num_groups=4, dropout=0.1)
  x = jax.ShapeDtypeStruct((2, hw, hw, channels), jnp.float32)
  t = jax.ShapeDtypeStruct((2,), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)
  out = jax.eval_shape(lambda v, x, t: model.apply(v, x, t, train=True,
                                                   rngs={'dropout': jax.random.PRNGKey(0)}),
                       variables, x, t)
  assert out.shape == (2, hw, hw, channels) and out.dtype == jnp.float32
  params = variables['params']
  assert any(k.endswith('attention0') for k in params) and 'mid_attention' in params


def test_bad_unet_is_one_line():
  with pytest.raises(ConfigError, match='model.num_res_blocks=0 must be >= 1'):
    jax.eval_shape(UNet(num_res_blocks=0).init, jax.random.PRNGKey(0),
                   jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,), jnp.int32))


# --- Schedules and the forward process. ---

@pytest.mark.parametrize('name', diffusion.SCHEDULES)
def test_alpha_bar_decreases_strictly_inside_0_1(name):
  s = diffusion.make_schedule(name, 1000)
  ab = np.asarray(s.alphas_cumprod, np.float64)
  assert np.all(np.diff(ab) < 0) and 0 < ab[-1] and ab[0] < 1
  np.testing.assert_allclose(np.cumprod(1 - np.asarray(s.betas, np.float64)), ab, rtol=1e-4)
  np.testing.assert_array_equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
  assert s.alphas_cumprod_prev[0] == 1


def test_schedule_endpoints():
  linear = diffusion.linear_betas(1000)
  assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)
  cosine = diffusion.cosine_betas(1000)
  assert cosine.max() == 0.999 and cosine[-1] == 0.999  # The clip: unclipped, the last is 1.
  f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  ab = np.cumprod(1 - cosine)
  np.testing.assert_allclose(ab[:999], f(np.arange(1, 1000)) / f(0), rtol=1e-9)
  assert 1 - ab[0] == pytest.approx(1 - f(1) / f(0))  # b_1 ~ 4e-5: the first step barely noises.
  # Other T keep the linear schedule's span (Nichol & Dhariwal's 1000 / T scaling).
  assert diffusion.linear_betas(100)[-1] == pytest.approx(0.2)
  with pytest.raises(ConfigError, match="diffusion.schedule='quadratic' is not supported"):
    diffusion.make_schedule('quadratic', 1000)


def test_q_sample_has_the_closed_form_mean_and_variance():
  s = diffusion.make_schedule('cosine', 1000)
  t = jnp.array([0, 10, 300, 700, 999])
  x0 = jnp.array([0.9, -0.5, 0.3, 1.0, -1.0])[:, None]  # [5, 1]
  noise = jax.random.normal(jax.random.PRNGKey(0), (5, 200_000))
  x_t = diffusion.q_sample(s, jnp.broadcast_to(x0, noise.shape), t, noise)  # [5, N]
  ab = s.alphas_cumprod[t]
  np.testing.assert_allclose(x_t.mean(axis=1), np.sqrt(ab) * x0[:, 0], atol=6e-3)
  np.testing.assert_allclose(x_t.var(axis=1), 1 - ab, rtol=1.5e-2, atol=1e-5)


@pytest.mark.parametrize('name', diffusion.SCHEDULES)
@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
def test_eps_x0_v_conversions_round_trip(name, prediction):
  s = diffusion.make_schedule(name, 1000)
  k0, k1 = jax.random.split(jax.random.PRNGKey(0))
  x0 = jax.random.uniform(k0, (64, 4, 4, 1), minval=-1, maxval=1)
  noise = jax.random.normal(k1, x0.shape)
  t = jnp.arange(0, 1000, 1000 // 64)[:64].at[-1].set(998)  # Up to ab ~ 1e-6 (eps: x0 / 1e-3).
  x_t = diffusion.q_sample(s, x0, t, noise)
  output = diffusion.target(s, x0, t, noise, prediction)
  got_x0, got_eps = diffusion.to_x0_eps(s, x_t, t, output, prediction)
  np.testing.assert_allclose(got_eps, noise, atol=1e-4)
  np.testing.assert_allclose(got_x0, x0, atol=2e-3 if prediction == 'eps' else 1e-5)
  if prediction == 'v':  # v = sqrt(ab) eps - sqrt(1 - ab) x0, back from the eps network's view.
    ab = s.alphas_cumprod[t][:, None, None, None]
    np.testing.assert_allclose(output, jnp.sqrt(ab) * noise - jnp.sqrt(1 - ab) * x0, atol=1e-6)


@pytest.mark.parametrize('prediction', diffusion.PREDICTIONS)
def test_min_snr_weights_the_x0_error_by_min_snr_gamma(prediction):
  """Weighted output error == min(SNR, gamma) x the x_0 error the same output error makes."""
  s = diffusion.make_schedule('cosine', 1000)
  k0, k1, k2 = jax.random.split(jax.random.PRNGKey(0), 3)
  x0 = jax.random.uniform(k0, (50, 4, 4, 1), minval=-1, maxval=1)
  noise = jax.random.normal(k1, x0.shape)
  t = jnp.arange(0, 1000, 20)  # [50]: SNR from ~4e4 down to ~1e-3, both sides of gamma.
  x_t = diffusion.q_sample(s, x0, t, noise)
  right = diffusion.target(s, x0, t, noise, prediction)
  wrong = right + 0.1 * jax.random.normal(k2, x0.shape)
  output_error = jnp.mean(jnp.square(wrong - right), axis=(1, 2, 3))
  x0_error = jnp.mean(jnp.square(diffusion.to_x0_eps(s, x_t, t, wrong, prediction)[0] - x0),
                      axis=(1, 2, 3))
  ab = s.alphas_cumprod[t]
  weight = diffusion.loss_weight(s, t, prediction, 'min_snr', gamma=5.0)
  np.testing.assert_allclose(weight * output_error, jnp.minimum(ab / (1 - ab), 5.0) * x0_error,
                             rtol=2e-3)
  assert weight.min() < 1e-3 and weight.max() <= 1  # The clean end is down-weighted.
  np.testing.assert_array_equal(diffusion.loss_weight(s, t, prediction, 'uniform'), 1.0)


def test_bad_loss_weighting_is_one_line():
  config = diffusion_config.get_config('smoke')
  config.diffusion.loss_weighting = 'snr'
  with pytest.raises(ConfigError, match=r"diffusion.loss_weighting='snr'.*min_snr"):
    build_experiment(config, jax.devices()[:1])


# --- Samplers, with the exact denoiser of Gaussian data x0 ~ N(MU, SIGMA^2). ---

MU, SIGMA = 0.3, 0.5


def _oracle(schedule, prediction):
  """E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) MU) / (ab SIGMA^2 + 1 - ab) (and v from it)."""
  def denoise(x, t):
    ab = schedule.alphas_cumprod[t][:, None]  # [B, 1]
    eps = jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * MU) / (ab * SIGMA ** 2 + 1 - ab)
    if prediction == 'eps':
      return eps
    x0 = (x - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab)
    return jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0
  return denoise


@pytest.fixture(scope='module')
def gaussian_samples():
  s = diffusion.make_schedule('cosine', 1000)
  shape, rng = (20_000, 1), jax.random.PRNGKey(0)
  ddim = lambda rng, prediction='eps', **kw: diffusion.ddim_sample(
      _oracle(s, prediction), s, shape, rng, prediction=prediction, clip=False, **kw)

  @jax.jit
  def sample(rng):
    return {
        'ddpm': diffusion.ddpm_sample(_oracle(s, 'eps'), s, shape, rng, clip=False),
        'ddim_eta1': ddim(rng, steps=1000, eta=1.0),
        'ddim_200': ddim(rng, steps=200),
        'ddim_50': ddim(rng, steps=50),
        'ddim_50_v': ddim(rng, 'v', steps=50),
        'ddim_50_again': ddim(rng, steps=50),
        'ddim_50_other_seed': ddim(jax.random.fold_in(rng, 1), steps=50),
    }

  return jax.device_get(sample(rng))


@pytest.mark.parametrize('name', ['ddpm', 'ddim_eta1', 'ddim_200'])
def test_samplers_recover_the_gaussian_data_distribution(gaussian_samples, name):
  """(DDIM's deterministic steps are coarse: with 50 the std comes out 2 % low, with 10 15 %.)"""
  x = gaussian_samples[name]
  assert abs(x.mean() - MU) < 0.015  # Standard error 0.0035.
  assert x.std() == pytest.approx(SIGMA, rel=0.02)  # Standard error 0.5 %.


def test_ddim_with_eta_1_over_all_steps_is_ancestral_ddpm(gaussian_samples):
  """Same distribution, and even the same draws: both take step t's noise from fold_in(key, t)."""
  ddpm, ddim = gaussian_samples['ddpm'], gaussian_samples['ddim_eta1']
  assert ddim.mean() == pytest.approx(ddpm.mean(), abs=0.01)
  assert ddim.var() == pytest.approx(ddpm.var(), rel=0.02)
  np.testing.assert_allclose(ddim, ddpm, atol=1e-3)


def test_ddim_eta_0_is_deterministic_given_the_seed(gaussian_samples):
  np.testing.assert_array_equal(gaussian_samples['ddim_50'], gaussian_samples['ddim_50_again'])
  assert not np.allclose(gaussian_samples['ddim_50'], gaussian_samples['ddim_50_other_seed'])
  # eps and v networks that agree on E[x0 | x_t] give the same samples.
  np.testing.assert_allclose(gaussian_samples['ddim_50_v'], gaussian_samples['ddim_50'],
                             atol=1e-3)


def test_samplers_clip_x0_to_the_data_range():
  s = diffusion.make_schedule('cosine', 100)
  wild = lambda x, t: -10 * jnp.ones_like(x)  # eps = -10: x0 far above 1 at every step.
  for x in (diffusion.ddim_sample(wild, s, (4, 2), jax.random.PRNGKey(0), steps=10),
            diffusion.ddpm_sample(wild, s, (4, 2), jax.random.PRNGKey(0))):
    np.testing.assert_allclose(x, 1.0, atol=1e-5)  # The last step returns the clipped x0.
  with pytest.raises(ConfigError, match='steps=101 must be in \\[1, num_timesteps=100\\]'):
    diffusion.ddim_sample(wild, s, (4, 2), jax.random.PRNGKey(0), steps=101)


# --- The objective on a tiny problem, in process (one compilation of each step). ---

@pytest.fixture(scope='module')
def classifier_dir(tmp_path_factory):
  """An untrained QualityNet in the classifier cache's format: enough to exercise the metric's
  plumbing in seconds (its values mean nothing; tests/test_image_quality.py checks those)."""
  directory = tmp_path_factory.mktemp('classifier')
  params = jax.jit(image_quality.QualityNet().init)(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 28, 28, 1)))['params']
  (directory / 'params.msgpack').write_bytes(
      flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
  (directory / 'info.json').write_text(json.dumps({'version': image_quality.VERSION,
                                                   'test_accuracy': 0.0}))
  return directory


class PixelDenoiser(nn.Module):
  """A per-pixel denoiser (x_t and a t-embedding through a 2-layer MLP): it learns, and compiles
  in seconds where the U-Net takes a minute on CPU (the U-Net trains in the tests through main).
  With `sown_loss`, it also sows that constant into 'losses' in training."""
  sown_loss: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    if train and self.sown_loss:
      self.sow('losses', 'constant', jnp.float32(self.sown_loss))
    temb = timestep_embedding(t, 16)[:, None, None, :]  # [B, 1, 1, 16]
    h = jnp.concatenate([x, jnp.broadcast_to(temb, x.shape[:3] + (16,))], axis=-1)
    return nn.Dense(x.shape[-1])(nn.silu(nn.Dense(32)(h)))


@pytest.fixture(scope='module')
def tiny_run(classifier_dir):
  """64 Fashion-MNIST images, batch 32, 40 steps at lr 1e-2: a problem the denoiser overfits."""
  config = diffusion_config.get_config('smoke')
  config.model = ml_collections.ConfigDict({'name': 'pixel_denoiser'})
  config.dataset.update(num_train_examples=64, num_eval_examples=48)
  config.update(num_train_steps=40, learning_rate=1e-2, warmup_steps=2, eval_batch_size=32,
                quality_metric=True, quality_classifier_dir=str(classifier_dir))
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(models.MODELS, 'pixel_denoiser', PixelDenoiser)
    exp = build_experiment(config, jax.devices()[:1])
  state = exp.init(jax.random.PRNGKey(0), exp.example_batch())
  batches = exp.train_iterator()
  losses, ema_checks = [], []
  for step in range(config.num_train_steps):
    before = jax.device_get((state.step, state.ema_params))
    state, metrics = exp.train_step(state, sharding.to_global(next(batches), exp.mesh))
    losses.append(float(metrics['train_loss']))
    if step in (0, 1, 30):
      ema_checks.append((before, jax.device_get((state.params, state.ema_params))))
  return exp, state, losses, ema_checks


def test_the_loss_adds_what_the_model_sows():
  config = diffusion_config.get_config('smoke')
  config.model = ml_collections.ConfigDict({'name': 'pixel_denoiser', 'sown_loss': 0.5})
  config.quality_metric = False
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(models.MODELS, 'pixel_denoiser', PixelDenoiser)
    exp = build_experiment(config, jax.devices()[:1])
  batch = exp.example_batch()
  state = exp.objective.init_state(jax.random.PRNGKey(0), batch)
  loss, (metrics, _) = exp.objective.loss(state.params, state, batch, jax.random.PRNGKey(1))
  assert float(metrics['train_aux_loss']) == 0.5
  assert float(loss) == pytest.approx(float(metrics['train_loss']) + 0.5)


def test_loss_falls_on_a_tiny_problem(tiny_run):
  _, _, losses, _ = tiny_run
  assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:4]), losses


def test_ema_follows_the_weights_with_the_ramp(tiny_run):
  """ema' = d ema + (1 - d) params', d = min(ema_decay, (1 + step) / (10 + step))."""
  exp, _, _, checks = tiny_run
  decay = exp.config.diffusion.ema_decay
  for (step, ema), (params, new_ema) in checks:
    d = min(decay, (1 + step) / (10 + step))
    jax.tree.map(lambda e, p, n: np.testing.assert_allclose(n, d * e + (1 - d) * p, atol=1e-6),
                 ema, params, new_ema)
  _, (params, ema) = checks[-1]
  assert any(not np.allclose(e, p) for e, p in zip(jax.tree.leaves(ema), jax.tree.leaves(params)))


def test_eval_is_deterministic_and_reports_the_quality_metric(tiny_run):
  exp, state, losses, _ = tiny_run
  first, again = evaluate(exp, state), evaluate(exp, state)
  assert first == again
  assert set(first) == {'eval_loss', 'eval_classifier_fid', 'eval_classifier_confidence',
                        'eval_class_histogram_ratio'}
  assert first['eval_loss'] < losses[0] and first['eval_classifier_fid'] > 0
  # 48 examples in batches of 32: the padding rows count for nothing.
  sums = [exp.eval_step(state, sharding.to_global(b, exp.mesh)) for b in exp.eval_batches()]
  assert [float(s['count']) for s in sums] == [32, 16]
  assert float(sums[1]['fake_count']) == 16


def test_generate_is_seeded(tiny_run):
  exp, state, _, _ = tiny_run
  make = lambda seed, **kw: np.asarray(exp.objective.generate(state, jax.random.PRNGKey(seed), 4,
                                                              steps=5, **kw))
  x = make(0)
  assert x.shape == (4, 28, 28, 1) and x.min() >= -1 and x.max() <= 1
  np.testing.assert_array_equal(x, make(0))  # eta = 0: deterministic given the seed.
  assert not np.array_equal(x, make(1))
  assert not np.array_equal(x, make(0, eta=1.0))
  with pytest.raises(ConfigError, match="sampler='ddpn' is not supported; allowed: ddpm, ddim"):
    exp.objective.generate(state, jax.random.PRNGKey(0), 4, sampler='ddpn')
  with pytest.raises(ConfigError, match='steps=0 must be in'):
    exp.objective.generate(state, jax.random.PRNGKey(0), 4, steps=0)


def test_missing_classifier_is_one_line(tmp_path):
  config = diffusion_config.get_config('smoke')
  config.update(quality_metric=True, quality_classifier_dir=str(tmp_path))
  with pytest.raises(ConfigError, match='feature classifier of classifier_fid is not in .*'
                     'python -m dl10_jax.train.image_quality --train'):
    build_experiment(config, jax.devices()[:1])


# --- Through main: SIGKILL between checkpoints, resume, then the sample CLI. ---

@pytest.mark.slow
def test_sigkill_then_resume_is_exact_with_the_ema_then_sample_cli(tmp_path, capsys):
  # A mesh of one device in every run (a faster compile; the same programs, so the same numbers).
  # The killed run and the sample CLI are processes of their own, loading this process's compiled
  # programs from the compilation cache; the reference and the resume run here.
  overrides = {'num_train_steps': 24, 'log_every_steps': 3, 'checkpoint_every_steps': 8,
               'eval_every_steps': 12}
  config = diffusion_config.get_config('smoke')
  config.update(overrides)
  config.mesh.data = overrides['mesh.data'] = 1
  train_and_evaluate(config, tmp_path / 'reference')
  reference = metric_events(tmp_path / 'reference', 'train_loss')

  env = this_process_cache_env()
  workdir = tmp_path / 'killed'
  run_until_killed([sys.executable, '-m', 'dl10_jax.main', '--config', 'configs/diffusion.py:smoke',
                    '--workdir', str(workdir)] + [f'--config.{k}={v}' for k, v in overrides.items()],
                   15, env)
  killed_at = max(metric_events(workdir, 'train_loss'))
  assert 8 < killed_at == 15 < 24, 'the run must die between checkpoints for this test to mean much'

  capsys.readouterr()
  train_and_evaluate(config, workdir)
  assert 'Resumed from the checkpoint of step 8' in capsys.readouterr().out
  assert metric_events(workdir, 'train_loss') == reference  # Exactly, step for step, on CPU.
  assert metric_events(workdir, 'eval_loss') == \
      metric_events(tmp_path / 'reference', 'eval_loss')  # The EMA's.
  assert (workdir / 'samples' / 'step_000024.png').is_file()
  states = [restore_run(w)[1] for w in (tmp_path / 'reference', workdir)]
  assert int(states[1].step) == 24
  jax.tree.map(np.testing.assert_array_equal, states[0].ema_params, states[1].ema_params)
  assert not np.array_equal(jax.tree.leaves(states[1].ema_params)[0],
                            jax.tree.leaves(states[1].params)[0])

  grid = tmp_path / 'grid.png'
  result = subprocess.run([sys.executable, '-m', 'dl10_jax.sample', '--workdir', str(workdir),
                           '--num_samples', '8', '--out', str(grid), '--sampler', 'ddim',
                           '--steps', '5'], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr
  assert grid.is_file() and 'wrote a grid of 8 of 8 samples' in result.stdout


def test_cifar10_by_tfds_name_trains(tmp_path):
  """`dataset.name=cifar10` (mocked: no network): 32x32x3 through the objective, the sampler and
  the grid (the per-pixel denoiser: the U-Net's 32x32x3 shapes are checked above)."""
  import tensorflow_datasets as tfds
  config = diffusion_config.get_config('smoke')
  config.model = ml_collections.ConfigDict({'name': 'pixel_denoiser'})
  config.dataset.update(name='cifar10', num_train_examples=-1, num_eval_examples=-1)
  config.update(num_train_steps=2, warmup_steps=1, eval_every_steps=2, checkpoint_every_steps=2)
  with tfds.testing.mock_data(num_examples=64), pytest.MonkeyPatch.context() as patch:
    patch.setitem(models.MODELS, 'pixel_denoiser', PixelDenoiser)
    final = train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
  assert np.isfinite(final['eval_loss'])
  assert (tmp_path / 'samples' / 'step_000002.png').is_file()
