"""GPT: causality, tied embeddings, GPT-2's parameter count, cached decoding, attention impls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl10_jax import config_recipes
from dl10_jax.errors import ConfigError
from dl10_jax.models import attention, gpt


def _small(**kwargs):
  fields = dict(vocab_size=17, block_size=16, num_layers=2, width=32, num_heads=4)
  fields.update(kwargs)
  return gpt.GPT(**fields)


def test_gpt2_small_has_124m_parameters_with_tied_embeddings():
  model = gpt.GPT(vocab_size=50_257, block_size=1024, **config_recipes.GPT_SIZES['gpt2'])
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 124_439_808
  assert 'head' not in shapes['params']  # The output projection is the token embedding.


def test_output_projection_is_tied_to_the_token_embedding():
  model = _small()
  tokens = jnp.arange(8)[None] % 17
  params = model.init(jax.random.PRNGKey(0), tokens)['params']
  grads = jax.grad(lambda p: model.apply({'params': p}, tokens)[0, -1, 3])(params)
  # Logit 3 reads row 3 of the embedding directly, whatever token 3's position.
  assert float(jnp.abs(grads['wte']['embedding'][3]).sum()) > 0
  scaled = dict(params, wte={'embedding': params['wte']['embedding'] * 2})
  assert not np.allclose(model.apply({'params': scaled}, tokens),
                         model.apply({'params': params}, tokens))


@pytest.mark.parametrize('positions', ['learned', 'rotary'])
def test_changing_a_future_token_never_changes_past_logits(positions):
  model = _small(positions=positions)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 17)
  params = model.init(jax.random.PRNGKey(1), tokens)
  logits = model.apply(params, tokens)
  changed = model.apply(params, tokens.at[:, 7].set((tokens[:, 7] + 1) % 17))
  np.testing.assert_array_equal(logits[:, :7], changed[:, :7])
  assert not np.allclose(logits[:, 7:], changed[:, 7:])


@pytest.mark.parametrize('positions', ['learned', 'rotary'])
def test_cached_decoding_equals_full_recomputation_at_every_position(positions):
  model = _small(positions=positions)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 16), 0, 17)
  params = model.init(jax.random.PRNGKey(1), tokens)
  full = model.apply(params, tokens)
  cache = model.init_cache(2, 16)
  # A prefill of 5 real tokens padded to 8, then one token at a time from position 5.
  padded = tokens[:, :8].at[:, 5:].set(0)
  logits, cache = model.apply(params, padded, cache, 0, 5, method=model.extend)
  steps = [logits[:, :5]]
  for t in range(5, 16):
    logits, cache = model.apply(params, tokens[:, t:t + 1], cache, t, 1, method=model.extend)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  """bf16 logits are off the float32 ones by about bf16's precision, 2^-8 relative: measured RMS
  error 1.0-1.3 x 2^-8 of the logits' standard deviation (seeds 0-3), where the logits of other
  tokens (or another seed's model) are ~300 x 2^-8 off. Below 0.1 x 2^-8 the compute would not be
  bf16 at all."""
  model = _small(dtype=jnp.bfloat16)
  tokens = jnp.arange(10)[None] % 17
  variables = model.init(jax.random.PRNGKey(0), tokens)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits = model.apply(variables, tokens)
  assert logits.dtype == jnp.float32
  want = _small().apply(variables, tokens)
  relative_rms = lambda got: float(jnp.sqrt(jnp.mean((got - want) ** 2)) / jnp.std(want))
  assert 0.1 * 2 ** -8 < relative_rms(logits) < 3 * 2 ** -8
  wrong = _small().apply(variables, tokens[:, ::-1])  # The logits of other tokens.
  assert relative_rms(wrong) > 30 * 2 ** -8


def test_bad_model_settings_fail_clearly():
  tokens = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ConfigError, match='model.width=30 must be a multiple of model.num_heads=4'):
    _small(width=30).init(jax.random.PRNGKey(0), tokens)
  with pytest.raises(ConfigError, match="model.positions='alibi' is not supported"):
    _small(positions='alibi').init(jax.random.PRNGKey(0), tokens)
  with pytest.raises(ConfigError, match='longer than model.block_size=16'):
    _small().init(jax.random.PRNGKey(0), jnp.zeros((1, 17), jnp.int32))


def _brute_force_attention(q, k, v, mask):
  b, tq, h, d = q.shape
  out = np.zeros(q.shape)
  for bi in range(b):
    for hi in range(h):
      kh = hi // (h // k.shape[2])
      for i in range(tq):
        s = np.array([q[bi, i, hi] @ k[bi, j, kh] / np.sqrt(d) for j in range(k.shape[1])])
        s = np.where(mask[bi if mask.shape[0] > 1 else 0, 0, i], s, -np.inf)
        w = np.exp(s - s.max())
        out[bi, i, hi] = (w / w.sum()) @ np.asarray(v[bi, :, kh])
  return out


@pytest.mark.parametrize('kv_heads', [4, 2, 1])  # Multi-head, grouped-query, multi-query.
def test_attention_masks_match_a_brute_force_loop(kv_heads):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(keys[0], (2, 6, 4, 8))
  k, v = (jax.random.normal(key, (2, 6, kv_heads, 8)) for key in keys[1:])
  segments = jnp.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
  mask = attention.make_mask(6, 6, causal=True, q_segment_ids=segments)
  got = attention.dot_product_attention(q, k, v, mask=mask)
  np.testing.assert_allclose(got, _brute_force_attention(np.asarray(q), np.asarray(k),
                                                         np.asarray(v), np.asarray(mask)),
                             atol=1e-5)
  causal = attention.dot_product_attention(q, k, v, causal=True)
  np.testing.assert_allclose(causal, attention.dot_product_attention(
      q, k, v, mask=attention.make_mask(6, 6, causal=True)), atol=1e-6)


def test_attention_rejects_bad_impls_and_masks():
  q = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ConfigError, match="attention_impl='flash' is not supported; allowed: xla"):
    attention.dot_product_attention(q, q, q, impl='flash')
  with pytest.raises(ConfigError, match=r'mask of shape \(1, 1, 4, 5\) does not broadcast'):
    attention.dot_product_attention(q, q, q, mask=jnp.ones((1, 1, 4, 5), bool))
  if jax.default_backend() == 'cpu':
    with pytest.raises(ConfigError, match='attention_impl=cudnn needs an NVIDIA GPU'):
      attention.dot_product_attention(q, q, q, impl='cudnn')
  assert attention.resolve_impl('auto', jnp.float32) in attention.IMPLS


@pytest.mark.parametrize('t,kv_heads', [(1, 4), (7, 4), (64, 2), (129, 4), (200, 1)])
def test_blocked_causal_attention_equals_xla_in_value_and_gradient(t, kv_heads):
  keys = jax.random.split(jax.random.PRNGKey(t), 4)
  q = jax.random.normal(keys[0], (2, t, 4, 16))
  k, v = (jax.random.normal(key, (2, t, kv_heads, 16)) for key in keys[1:3])
  cotangent = jax.random.normal(keys[3], q.shape)

  def run(impl):
    f = lambda q, k, v: jnp.sum(attention.dot_product_attention(q, k, v, causal=True,
                                                                impl=impl) * cotangent)
    return jax.value_and_grad(f, argnums=(0, 1, 2))(q, k, v)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               run('blocked'), run('xla'))
