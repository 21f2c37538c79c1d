"""The Transformer: encoder classifier (padding, pooling, positions, rows of images), encoder-
decoder (causality, overfitting a batch), greedy and beam decoding under jit, the configs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import read_metrics, run_module
from configs import transformer as transformer_config
from dl10_jax.errors import ConfigError
from dl10_jax.models import decoding, transformer
from dl10_jax.train.trainer import train_and_evaluate

RNG = jax.random.PRNGKey(0)


def _classifier(**kwargs):
  fields = dict(num_classes=3, vocab_size=20, num_layers=2, width=32, num_heads=4,
                dropout_rate=0.0)
  fields.update(kwargs)
  return transformer.TransformerClassifier(**fields)


@pytest.mark.parametrize('positions', transformer.POSITIONS)
@pytest.mark.parametrize('pooling', transformer.POOLINGS)
@pytest.mark.slow
def test_padding_never_changes_the_classifier_output(positions, pooling):
  model = _classifier(positions=positions, pooling=pooling)
  tokens = jnp.array([[5, 3, 7, 9, 0, 0], [4, 4, 2, 0, 0, 0]])
  variables = model.init(RNG, tokens)
  logits = model.apply(variables, tokens)
  longer = jnp.concatenate([tokens, jnp.zeros((2, 5), jnp.int32)], axis=1)
  np.testing.assert_allclose(model.apply(variables, longer), logits, atol=1e-5)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32


def test_images_are_read_as_rows():
  model = _classifier(num_classes=10, vocab_size=0)
  images = jax.random.uniform(RNG, (2, 28, 28, 1))
  variables = model.init(RNG, images)
  assert variables['params']['embed']['kernel'].shape == (28, 32)
  assert model.apply(variables, images).shape == (2, 10)


def test_sinusoidal_positions_follow_the_formula():
  table = transformer.sinusoidal(jnp.arange(5), 8)
  pos, i = 3, 1
  np.testing.assert_allclose(table[pos, i], np.sin(pos / 10_000 ** (i / 4)), rtol=1e-6)
  np.testing.assert_allclose(table[pos, 4 + i], np.cos(pos / 10_000 ** (i / 4)), rtol=1e-6)


def test_bad_transformer_settings_fail_clearly():
  tokens = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ConfigError, match="model.positions='alibi' is not supported"):
    _classifier(positions='alibi').init(RNG, tokens)
  with pytest.raises(ConfigError, match="model.pooling='max' is not supported"):
    _classifier(pooling='max').init(RNG, tokens)
  with pytest.raises(ConfigError, match='longer than model.max_len=4'):
    _classifier(positions='learned', max_len=4).init(RNG, tokens)
  with pytest.raises(ConfigError, match='model.width=30 must be a multiple'):
    _seq2seq(width=30).init(RNG, (tokens, tokens))


def _seq2seq(**kwargs):
  fields = dict(vocab_size=14, num_layers=1, width=32, num_heads=2, max_len=32)
  fields.update(kwargs)
  return transformer.EncoderDecoder(**fields)


def _reverse_batch(n=8, length=5):
  digits = np.random.default_rng(0).integers(4, 14, (n, length))
  source = jnp.asarray(digits, jnp.int32)
  target = jnp.concatenate([source[:, ::-1], jnp.full((n, 1), 2, jnp.int32)], axis=1)  # EOS
  decoder_input = jnp.concatenate([jnp.ones((n, 1), jnp.int32), target[:, :-1]], axis=1)  # BOS
  return source, target, decoder_input


@pytest.mark.parametrize('positions', transformer.POSITIONS)
@pytest.mark.slow
def test_decoder_is_causal_and_source_padding_is_ignored(positions):
  model = _seq2seq(positions=positions)
  source, _, decoder_input = _reverse_batch(2)
  variables = model.init(RNG, (source, decoder_input))
  logits = model.apply(variables, (source, decoder_input))
  changed = model.apply(variables, (source, decoder_input.at[:, 3].set(9)))
  np.testing.assert_array_equal(logits[:, :3], changed[:, :3])
  assert not np.allclose(logits[:, 3:], changed[:, 3:])
  padded = jnp.concatenate([source, jnp.zeros((2, 3), jnp.int32)], axis=1)
  np.testing.assert_allclose(model.apply(variables, (padded, decoder_input)), logits, atol=1e-5)


def _overfit(model, steps=150):
  source, target, decoder_input = _reverse_batch()
  params = model.init(RNG, (source, decoder_input))['params']
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits = model.apply({'params': p}, (source, decoder_input))
      return optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)
  return {'params': params}, source, target, float(loss)


@pytest.mark.slow
def test_encoder_decoder_overfits_a_tiny_batch_and_decodes_it():
  model = _seq2seq()
  variables, source, target, loss = _overfit(model)
  assert loss < 0.05, loss
  greedy = jax.jit(functools.partial(decoding.greedy_decode, model), static_argnums=2)
  np.testing.assert_array_equal(greedy(variables, source, target.shape[1]), target)
  beam = decoding.beam_search(model, variables, source, target.shape[1], beam_size=3)
  np.testing.assert_array_equal(beam, target)


@pytest.mark.slow
def test_beam_search_with_one_beam_equals_greedy_and_compiles_once():
  model = _seq2seq()
  variables, source, _, _ = _overfit(model, steps=45)  # Half-trained: varied, imperfect outputs.
  greedy = jax.jit(functools.partial(decoding.greedy_decode, model), static_argnums=2)
  beam1 = jax.jit(functools.partial(decoding.beam_search, model, beam_size=1), static_argnums=2)
  want = greedy(variables, source, 7)
  np.testing.assert_array_equal(beam1(variables, source, 7), want)
  other = greedy(variables, (source + 3) % 10 + 4, 7)  # New values, same shapes: no recompile.
  assert not np.array_equal(other, want)
  assert greedy._cache_size() == 1
  out = decoding.beam_search(model, variables, source, 7, beam_size=4, alpha=0.6)
  assert out.shape == want.shape
  # After EOS only pads, in every decoder.
  for tokens in (np.asarray(want), np.asarray(out)):
    for row in tokens:
      eos = np.flatnonzero(row == 2)
      if eos.size:
        assert np.all(row[eos[0] + 1:] == 0)


@pytest.mark.slow
def test_transformer_classifier_trains_on_sequential_images(tmp_path):
  # The genre-task smoke config runs through the command line below.
  final = train_and_evaluate(transformer_config.get_config('seq_fmnist,smoke'), tmp_path)
  assert np.isfinite(final['eval_loss']) and 0 <= final['eval_accuracy'] <= 1


@pytest.mark.slow
def test_transformer_smoke_config_runs_from_the_command_line(tmp_path):
  result = run_module('dl10_jax.main', '--config', 'configs/transformer.py:smoke',
                      '--workdir', str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert any('eval_accuracy' in e for e in read_metrics(tmp_path))
