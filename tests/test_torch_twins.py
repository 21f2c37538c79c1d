"""The PyTorch twins of scripts/benchmark.py --torch (scripts/torch_twins.py).

A twin must be the JAX model its config builds, or the benchmark compares two different models:
each has exactly the JAX model's number of trainable parameters (for the GAN: generator plus
discriminator, and each network alone), and the twins of the generative models run their
training step (two optimizers and the EMA for the GAN; noise, weighting and EMA for DDPM).
Smoke configs; the JAX parameters come from the experiment's abstract (eval_shape) state.
"""

import importlib
import importlib.util
import math

import jax
import pytest

from conftest import ROOT

torch = pytest.importorskip('torch')

# (config module, variant, overrides of config.model).
CASES = {
    'cnn': ('cnn', 'smoke', {}),
    'lstm_lm': ('lstm', 'smoke', {}),
    'rnn_lm': ('rnn', 'lm,smoke', {}),
    'gpt': ('gpt', 'smoke', {}),  # Rotary positions (the config's), ...
    'gpt_learned_positions': ('gpt', 'smoke', {'positions': 'learned'}),  # ... and a wpe table.
    'resnet': ('resnet', 'smoke', {}),
    'mobilenet_v1': ('mobilenet', 'smoke', {}),
    'mobilenet_v2': ('mobilenet', 'v2,smoke', {}),
    'shufflenet_v2': ('mobilenet', 'shufflenet,smoke', {}),
    'dcgan': ('gan', 'smoke', {}),
    'dcgan_wide_g': ('gan', 'smoke', {'generator_features': 12}),  # G wider than D.
    'ddpm_unet': ('diffusion', 'smoke', {}),
    # The smoke U-Net has attention only in the middle; here also at 14x14 on both paths.
    'ddpm_unet_attention': ('diffusion', 'smoke', {'attention_resolutions': (14,)}),
}


@pytest.fixture(scope='module')
def torch_twins():
  spec = importlib.util.spec_from_file_location('torch_twins', ROOT / 'scripts/torch_twins.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _experiment(case: str):
  from dl10_jax.train.experiment import build_experiment
  name, variant, overrides = CASES[case]
  config = importlib.import_module(f'configs.{name}').get_config(variant)
  config.model.update(overrides)
  if 'quality_metric' in config:
    config.quality_metric = False  # Its classifier is not what is benchmarked.
  return build_experiment(config)


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('case', CASES)
@pytest.mark.slow
def test_twin_has_the_jax_models_parameter_count(torch_twins, case):
  exp = _experiment(case)
  params = exp.abstract_state.params
  _, count = torch_twins.make_step(exp.config)
  assert count == _count(params) > 0
  if exp.config.model.name == 'dcgan':
    nets, _ = torch_twins.TWINS['dcgan'](exp.config)
    for net in ('generator', 'discriminator'):
      assert torch_twins.num_trainable(nets[net]) == _count(params[net]), net


@pytest.mark.parametrize('case,reuse_fakes', [('dcgan', False), ('dcgan', True),
                                              ('ddpm_unet', False)])
@pytest.mark.slow
def test_twin_step_trains_on_the_pipelines_batches(torch_twins, case, reuse_fakes):
  exp = _experiment(case)
  if reuse_fakes:
    exp.config.gan.reuse_fakes = True
  step, _ = torch_twins.make_step(exp.config)
  params = [p for p in step.model.parameters() if p.requires_grad]  # GAN: G's, then D's.
  before = {p: p.detach().clone() for p in params}
  step(next(exp.train_iterator()))
  for p in params:  # Every weight took a step (both networks of the GAN).
    assert torch.isfinite(p).all() and not torch.equal(p, before[p]), p.shape
  # The EMA (of G's weights for the GAN), ramped: d = min(decay, 1/10) at the first update.
  assert len(step.ema.params) == (len(list(step.model['generator'].parameters()))
                                  if case == 'dcgan' else len(params))
  for average, p in zip(step.ema.ema, step.ema.params):
    torch.testing.assert_close(average, 0.1 * before[p] + 0.9 * p.detach())
