"""model.remat: the same parameters, loss and gradients as without it, and less memory."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl10_jax import models
from dl10_jax.errors import ConfigError
from dl10_jax.models import decoding, gpt, layers, transformer, unet

FAST_COMPILE = {'xla_backend_optimization_level': 0}  # Same buffers, a third of the compile time.
S = jax.ShapeDtypeStruct


def _tokens(shape, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 1, 13)


def _gpt(remat, **fields):
  return gpt.GPT(**{**dict(vocab_size=13, block_size=8, num_layers=2, width=8, num_heads=2,
                           positions='rotary', dropout_rate=0.1, remat=remat), **fields})


# Each model at a tiny size with dropout (train mode: the same masks with and without remat), and
# its inputs.
CASES = {
    'gpt': (_gpt, lambda: (_tokens((2, 8)),)),
    'classifier': (lambda remat: transformer.TransformerClassifier(
                       num_classes=3, vocab_size=13, num_layers=1, width=8, num_heads=2,
                       max_len=16, dropout_rate=0.1, remat=remat),
                   lambda: (_tokens((2, 8)),)),
    'encoder_decoder': (lambda remat: transformer.EncoderDecoder(
                            vocab_size=13, num_layers=1, width=8, num_heads=2, max_len=8,
                            dropout_rate=0.1, remat=remat),
                        lambda: ((_tokens((2, 6)), _tokens((2, 5), seed=2)),)),
    'unet': (lambda remat: unet.UNet(channels=4, channel_mults=(1,), attention_resolutions=(4,),
                                     head_channels=4, num_groups=2, dropout=0.1, remat=remat),
             lambda: (jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 1)), jnp.array([3, 7]))),
}


def _loss(model, params, *inputs):
  out = model.apply({'params': params}, *inputs, train=True,
                    rngs={'dropout': jax.random.PRNGKey(2)})
  return jnp.mean(jnp.square(out))


def _shapes(model, inputs):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)['params']


# Every policy on GPT; the others wrap their blocks the same way, so 'full' stands for them all.
@pytest.mark.parametrize('name,policies', [('gpt', tuple(layers.REMAT_POLICIES)),
                                           ('classifier', ('none', 'full')),
                                           ('encoder_decoder', ('none', 'full')),
                                           pytest.param('unet', ('none', 'full'),
                                                        marks=pytest.mark.slow)])
def test_remat_keeps_the_parameters_loss_and_gradients(name, policies):
  make, inputs = CASES[name]
  inputs = inputs()
  for policy in policies:  # Names and shapes: checkpoints load either way.
    assert _shapes(make(policy), inputs) == _shapes(make('none'), inputs), policy
  params = jax.jit(make('none').init, compiler_options=FAST_COMPILE)(
      jax.random.PRNGKey(0), *inputs)['params']
  run_all = lambda p: {policy: jax.value_and_grad(_loss, 1)(make(policy), p, *inputs)
                       for policy in policies}
  results = jax.jit(run_all, compiler_options=FAST_COMPILE)(params)
  want_loss, want_grads = results.pop('none')
  for policy, (loss, grads) in results.items():
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=policy)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7,
                                                         err_msg=policy), grads, want_grads)


def _temp_bytes(model, inputs) -> int:
  """Scratch memory XLA plans for a gradient of the model: activations, for the most part."""
  grad = jax.grad(lambda p, *x: jnp.mean(jnp.square(model.apply({'params': p}, *x, train=True))))
  compiled = jax.jit(grad).lower(_shapes(model, inputs), *inputs).compile(FAST_COMPILE)
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize('name,make,inputs', [
    # 2 x 16, T 64, batch 4: 1.50 MB of temporaries without remat, 0.78 MB with.
    ('gpt', lambda remat: _gpt(remat, vocab_size=32, block_size=64, width=16, dropout_rate=0.0),
     (S((4, 64), jnp.int32),)),
    # 8 channels, 8 x 8 images, batch 4: 1.19 MB without remat, 0.59 MB with.
    ('unet', lambda remat: unet.UNet(channels=8, channel_mults=(1,), attention_resolutions=(8,),
                                     head_channels=8, num_groups=4, remat=remat),
     (S((4, 8, 8, 1), jnp.float32), S((4,), jnp.int32))),
])
def test_full_remat_lowers_the_memory_xla_plans(name, make, inputs):
  none, full = _temp_bytes(make('none'), inputs), _temp_bytes(make('full'), inputs)
  assert full < 0.8 * none, (name, full, none)


def test_decoding_with_a_kv_cache_runs_under_remat():
  make, inputs = CASES['gpt']
  params = jax.jit(make('none').init, compiler_options=FAST_COMPILE)(
      jax.random.PRNGKey(0), *inputs())['params']
  prompt = jnp.array([3, 1, 4], jnp.int32)
  logits = jax.jit(make('none').apply, compiler_options=FAST_COMPILE)({'params': params},
                                                                      prompt[None])
  out = decoding.generate(make('full'), params, prompt, max_new_tokens=2, temperature=0)
  assert out.shape == (1, 2) and int(out[0, 0]) == int(jnp.argmax(logits[0, -1]))


def test_an_unknown_policy_is_one_config_error_line():
  make, inputs = CASES['gpt']
  with pytest.raises(ConfigError) as error:
    make('all').init(jax.random.PRNGKey(0), *inputs())
  assert str(error.value) == ("model.remat='all' is not supported; allowed: none, full, dots, "
                              "dots_no_batch")


@pytest.mark.parametrize('config_name', ['gpt', 'transformer', 'seq2seq', 'diffusion'])
def test_the_configs_set_remat(config_name):
  config = importlib.import_module(f'configs.{config_name}').get_config('smoke')
  assert config.model.remat == 'none'
  config.model.remat = 'full'
  config.model.update({k: 13 for k in ('vocab_size', 'num_classes') if k in config.model})
  assert models.build(config.model).remat == 'full'
