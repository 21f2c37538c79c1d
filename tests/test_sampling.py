"""Sampling: the logit filters, and decoding that compiles once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl10_jax.errors import ConfigError
from dl10_jax.models import cnn, decoding, gpt, recurrent


def test_top_k_and_top_p_keep_the_right_tokens():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda f: np.isfinite(np.asarray(f))[0].tolist()
  assert kept(decoding.filter_logits(logits, 1.0, 2, 1.0)) == [True, True, False, False, False]
  # The smallest set reaching 0.8: 0.5 + 0.2 + 0.15.
  assert kept(decoding.filter_logits(logits, 1.0, 0, 0.8)) == [True, True, True, False, False]
  assert kept(decoding.filter_logits(logits, 1.0, 0, 0.3)) == [True, False, False, False, False]
  np.testing.assert_allclose(decoding.filter_logits(logits, 0.5, 0, 1.0), logits * 2)


@pytest.mark.slow
def test_greedy_generation_is_the_argmax_chain_and_compiles_once():
  model = gpt.GPT(vocab_size=13, block_size=32, num_layers=2, width=16, num_heads=2)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']
  prompt = jnp.array([3, 1, 4], jnp.int32)
  out = decoding.generate(model, params, prompt, max_new_tokens=6, temperature=0)
  context = list(prompt)
  for _ in range(6):  # Full recomputation, one token at a time.
    logits = model.apply({'params': params}, jnp.array([context]))
    context.append(int(jnp.argmax(logits[0, -1])))
  assert out.tolist() == [context[3:]]
  decoding._generate.clear_cache()
  for prompt_len in (1, 2, 5, 7):  # One bucket of 8: one compilation.
    decoding.generate(model, params, jnp.arange(prompt_len, dtype=jnp.int32) % 13,
                      max_new_tokens=6, temperature=0)
  assert decoding._generate._cache_size() == 1


def test_only_incremental_language_models_generate():
  assert isinstance(gpt.GPT(vocab_size=13), decoding.IncrementalLM)
  assert isinstance(recurrent.RecurrentLM(vocab_size=13), decoding.IncrementalLM)
  with pytest.raises(ConfigError, match='CNN cannot generate tokens: it has no init_cache'):
    decoding.generate(cnn.CNN(), {}, jnp.array([1], jnp.int32), max_new_tokens=2)


def test_what_a_run_samples_follows_its_objective_class():
  from dl10_jax.train import OBJECTIVES
  samples = {name: cls.samples for name, cls in OBJECTIVES.items() if cls.samples}
  assert samples == {'diffusion': 'images', 'gan': 'images', 'language_model': 'text'}
  for name in ('diffusion', 'gan'):
    assert callable(OBJECTIVES[name].generate)


@pytest.mark.slow
def test_a_run_that_samples_nothing_fails_with_one_line(tmp_path):
  from conftest import run_module
  (tmp_path / 'config.json').write_text('{"objective": "classification"}')
  result = run_module('dl10_jax.sample', '--workdir', str(tmp_path), timeout=180)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert lines == [f"error: the run in {tmp_path} has objective 'classification'; sampling "
                   'supports diffusion, gan, language_model'], result.stderr
