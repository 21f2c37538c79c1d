"""Attention: soft multi-head attention against brute force, impls against xla, the three hard
kinds (REINFORCE unbiased, Gumbel straight-through, top-k), translated images, the configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import read_metrics, run_module
from configs import attention as attention_config
from dl10_jax import data
from dl10_jax.errors import ConfigError
from dl10_jax.kernels import flash_attention
from dl10_jax.models import attention, hard_attention
from dl10_jax.train.objective import policy_gradient_loss
from dl10_jax.train.trainer import train_and_evaluate

RNG = jax.random.PRNGKey(0)


def _brute_force(q, k, v, mask, score, w=None):
  """One query, head and key at a time: softmax over the visible keys of the chosen score."""
  b, tq, h, d = q.shape
  mask = np.broadcast_to(mask, (b, 1, tq, k.shape[1]))
  out, weights = np.zeros(q.shape), np.zeros((b, h, tq, k.shape[1]))
  for bi in range(b):
    for hi in range(h):
      kh = hi // (h // k.shape[2])
      for i in range(tq):
        s = np.array([q[bi, i, hi] @ k[bi, j, kh] / np.sqrt(d) if score == 'dot'
                      else w[hi] @ np.tanh(q[bi, i, hi] + k[bi, j, kh])
                      for j in range(k.shape[1])])
        s = np.where(mask[bi, 0, i], s, -np.inf)
        p = np.exp(s - s.max())
        weights[bi, hi, i] = p / p.sum()
        out[bi, i, hi] = weights[bi, hi, i] @ np.asarray(v[bi, :, kh])
  return out, weights


def _qkv(kv_heads, tq=6, tk=6):
  keys = jax.random.split(RNG, 3)
  return (jax.random.normal(keys[0], (2, tq, 4, 8)),
          jax.random.normal(keys[1], (2, tk, kv_heads, 8)),
          jax.random.normal(keys[2], (2, tk, kv_heads, 8)))


MASKS = {
    'causal': lambda: attention.make_mask(6, 6, causal=True),
    'padding': lambda: attention.make_mask(6, 6, kv_valid=jnp.array([[1, 1, 1, 1, 0, 0],
                                                                     [1, 1, 1, 1, 1, 1]])),
    'segments': lambda: attention.make_mask(6, 6, causal=True, q_segment_ids=jnp.array(
        [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])),
}


@pytest.mark.parametrize('score', ['dot', 'additive'])
@pytest.mark.parametrize('mask_name', list(MASKS))
@pytest.mark.parametrize('kv_heads', [4, 2])  # Multi-head and grouped-query.
def test_scores_and_weighted_sums_match_a_brute_force_loop(score, mask_name, kv_heads):
  q, k, v = _qkv(kv_heads)
  mask = MASKS[mask_name]()
  w = jax.random.normal(jax.random.PRNGKey(3), (4, 8))
  if score == 'dot':
    scores = attention.attention_scores(q, k, mask=mask)
  else:
    scores = attention.additive_scores(q, k, w, mask=mask)
  weights = jax.nn.softmax(scores, axis=-1)
  want_out, want_weights = _brute_force(*map(np.asarray, (q, k, v, mask)), score, np.asarray(w))
  np.testing.assert_allclose(weights, want_weights, atol=1e-5)
  np.testing.assert_allclose(attention.attend(weights, v), want_out, atol=1e-5)
  if score == 'dot':  # The one attention function agrees, weights included.
    out, got = attention.dot_product_attention(q, k, v, mask=mask, return_weights=True)
    np.testing.assert_allclose(out, want_out, atol=1e-5)
    np.testing.assert_allclose(got, want_weights, atol=1e-5)


@pytest.mark.parametrize('score', ['dot', 'additive'])
def test_multi_head_attention_masks_padding_and_cross_attends(score):
  x = jax.random.normal(RNG, (2, 5, 16))
  memory = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 12))
  mha = attention.MultiHeadAttention(num_heads=4, num_kv_heads=2, score=score)
  variables = mha.init(RNG, x, memory)
  valid = jnp.array([[1] * 7, [1] * 4 + [0] * 3])
  mask = attention.make_mask(5, 7, kv_valid=valid)
  out, weights = mha.apply(variables, x, memory, mask=mask, return_weights=True)
  assert out.shape == (2, 5, 16) and weights.shape == (2, 4, 5, 7)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
  assert float(jnp.abs(weights[1, :, :, 4:]).max()) == 0.0
  changed = memory.at[1, 4:].set(100.0)  # Padding keys change nothing.
  np.testing.assert_allclose(mha.apply(variables, x, changed, mask=mask), out, atol=1e-5)
  # Causal self-attention: a later query never changes an earlier output.
  variables = mha.init(RNG, x)
  y = mha.apply(variables, x, causal=True)
  np.testing.assert_allclose(mha.apply(variables, x.at[:, 3:].set(7.0), causal=True)[:, :3],
                             y[:, :3], atol=1e-5)


def _impl_cases():
  """(impl, masked) that run another path than `xla` here: `blocked` (causal self-attention
  only; with a mask it is xla), the flash kernels in the Pallas interpreter (causal + key
  padding), cuDNN on a GPU. `auto` on CPU is one of these (blocked), or xla itself."""
  cases = [('blocked', False), ('pallas_interpret', True)]
  return cases + ([('cudnn', False), ('cudnn', True)] if jax.default_backend() == 'gpu' else [])


@pytest.mark.parametrize('impl,masked', _impl_cases())
def test_every_impl_agrees_with_xla_in_values_and_gradients(impl, masked):
  dtype = jnp.bfloat16 if impl == 'cudnn' else jnp.float32
  q, k, v = (x.astype(dtype) for x in _qkv(4, 70, 70))  # > one block of `blocked`.
  mask = attention.make_mask(70, 70, kv_valid=jnp.arange(70)[None] < jnp.array([[60], [70]])) \
      if masked else None
  # The comparison is with another path, not xla with itself.
  assert attention.resolve_impl(impl, dtype, causal_only=not masked, flash_ok=True,
                                cudnn_ok=True) != 'xla'
  assert impl != 'pallas_interpret' or flash_attention.supports(q.shape[-1], dtype)

  def f(impl, q, k, v):
    out = attention.dot_product_attention(q, k, v, mask=mask, causal=True, impl=impl)
    return (out.astype(jnp.float32) ** 2).sum(), out

  (_, want), want_grads = jax.value_and_grad(f, (1, 2, 3), has_aux=True)('xla', q, k, v)
  (_, got), grads = jax.value_and_grad(f, (1, 2, 3), has_aux=True)(impl, q, k, v)
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
  np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=tol)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), atol=tol * 10)


def test_bad_masks_impls_and_kinds_fail_with_one_clear_line():
  x = jnp.zeros((1, 4, 8))
  mha = attention.MultiHeadAttention(num_heads=2)
  with pytest.raises(ConfigError, match=r'mask of shape \(1, 1, 4, 5\) does not broadcast'):
    mha.init(RNG, x, mask=jnp.ones((1, 1, 4, 5), bool))
  with pytest.raises(ConfigError, match=r'mask of shape \(1, 1, 4, 5\) does not broadcast'):
    attention.MultiHeadAttention(num_heads=2, score='additive').init(
        RNG, x, mask=jnp.ones((1, 1, 4, 5), bool))
  with pytest.raises(ConfigError, match="attention_impl='flash' is not supported; allowed: xla"):
    attention.MultiHeadAttention(num_heads=2, attention_impl='flash').init(RNG, x)
  with pytest.raises(ConfigError, match="score='cosine' is not supported; allowed: dot"):
    attention.MultiHeadAttention(score='cosine').init(RNG, x)
  with pytest.raises(ConfigError, match="model.attention='glimpse' is unknown; allowed: soft"):
    hard_attention.make('glimpse')
  with pytest.raises(ConfigError, match=r'model.k=9 must be in \[1, 4\]'):
    hard_attention.make('topk', k=9).init(RNG, x)


def test_reinforce_gradient_is_unbiased_on_a_toy_problem():
  theta = jnp.array([0.5, -1.0, 0.2, 1.0])  # Scores of 4 choices.
  reward = jnp.array([1.0, 3.0, -2.0, 0.5])  # Reward of each choice.
  exact = jax.grad(lambda t: jax.nn.softmax(t) @ reward)(theta)
  n = 20_000

  def per_sample_grad(rng):
    def surrogate(t):
      weights, log_prob = hard_attention.sample_categorical(rng, t[None], 1)
      return -policy_gradient_loss(log_prob, jnp.array([0.7]), weights @ reward)
    return jax.grad(surrogate)(theta)

  grads = jax.vmap(per_sample_grad)(jax.random.split(RNG, n))  # [n, 4]
  err = np.abs(grads.mean(0) - exact)
  assert np.all(err < 4 * grads.std(0) / np.sqrt(n) + 1e-6), (grads.mean(0), exact)


def test_reinforce_attention_samples_in_training_and_sows_its_terms():
  x = jax.random.normal(RNG, (3, 1, 8))
  grid = jax.random.normal(jax.random.PRNGKey(1), (3, 10, 8))
  att = hard_attention.make('reinforce', k=2, entropy_coef=0.1)
  variables = att.init(RNG, x, grid)
  (_, weights), sown = att.apply(variables, x, grid, train=True, return_weights=True,
                                 rngs={'sample': RNG}, mutable=['policy', 'losses'])
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
  assert set(np.unique(np.asarray(weights) * 2)) <= {0.0, 1.0, 2.0}  # Counts of 2 draws.
  assert sown['policy']['log_prob'][0].shape == (3,) and sown['policy']['baseline'][0].shape == (3,)
  assert float(sown['losses']['entropy_bonus'][0]) < 0


def test_gumbel_straight_through_forward_is_one_hot_and_backward_non_zero():
  scores = jax.random.normal(RNG, (5, 12))
  y = hard_attention.gumbel_softmax_st(jax.random.PRNGKey(1), scores, 1, 0.5)
  assert set(np.unique(np.asarray(y))) == {0.0, 1.0}
  np.testing.assert_array_equal(y.sum(-1), 1.0)
  g = jax.grad(lambda s: (hard_attention.gumbel_softmax_st(jax.random.PRNGKey(1), s, 1, 0.5)
                          @ jnp.arange(12.0)).sum())(scores)
  assert float(jnp.abs(g).sum()) > 0
  temps = [float(hard_attention.gumbel_temperature(s, 1.0, 0.1, 100)) for s in (0, 50, 100, 500)]
  np.testing.assert_allclose(temps, [1.0, 0.1 ** 0.5, 0.1, 0.1], rtol=1e-6)


@pytest.mark.parametrize('estimator', ['straight_through', 'perturbed'])
def test_topk_selects_exactly_k_and_has_a_gradient(estimator):
  scores = jax.random.normal(RNG, (4, 3, 20))
  mask = hard_attention.topk_mask(scores, 3)
  np.testing.assert_array_equal(mask.sum(-1), 3.0)
  np.testing.assert_array_equal(jnp.sort(jnp.where(mask > 0, scores, -jnp.inf), -1)[..., -3:],
                                jnp.sort(scores, -1)[..., -3:])
  x = jax.random.normal(RNG, (2, 1, 8))
  grid = jax.random.normal(jax.random.PRNGKey(1), (2, 20, 8))
  att = hard_attention.make('topk', k=3, topk_estimator=estimator)
  variables = att.init(RNG, x, grid)
  _, weights = att.apply(variables, x, grid, return_weights=True)  # Eval: exactly k.
  np.testing.assert_array_equal((weights > 0).sum(-1), 3)

  def loss(params):
    y = att.apply({'params': params}, x, grid, train=True, rngs={'sample': RNG})
    return (y ** 2).sum()

  grads = jax.grad(loss)(variables['params'])
  assert float(jnp.abs(grads['key']['kernel']).sum()) > 0  # Through the selection to the scores.
  if estimator == 'straight_through':
    _, w = att.apply(variables, x, grid, train=True, return_weights=True, rngs={'sample': RNG})
    np.testing.assert_array_equal((w > 0).sum(-1), 3)


def test_translated_images_are_deterministic_per_record():
  from ml_collections import ConfigDict
  config = attention_config.get_config('smoke,clutter').dataset
  splits = data.load(config)
  first, again = splits.eval[5], data.load(config).eval[5]
  np.testing.assert_array_equal(first['image'], again['image'])
  assert first['image'].shape == (60, 60, 1) and first['image'].dtype == np.uint8
  assert not np.array_equal(splits.eval[5]['image'], splits.eval[6]['image'])
  plain = data.load(ConfigDict(dict(config.to_dict(), clutter=0))).train[3]
  assert (plain['image'] > 0).sum() <= 28 * 28  # Only the object: one 28x28 window is non-zero.
  rows, cols = np.nonzero(plain['image'][..., 0])
  assert rows.max() - rows.min() < 28 and cols.max() - cols.min() < 28
  with pytest.raises(ConfigError, match='dataset.canvas=20 is smaller'):
    data.load(ConfigDict(dict(config.to_dict(), canvas=20)))


@pytest.mark.parametrize('kind', ['soft', 'reinforce', 'gumbel', 'topk'])
def test_soft_and_hard_attention_train_on_translated_images(kind, tmp_path):
  config = attention_config.get_config(f'{kind},smoke')
  final = train_and_evaluate(config, tmp_path)
  assert np.isfinite(final['eval_loss']) and 0 <= final['eval_accuracy'] <= 1
  if kind == 'reinforce':
    assert 'train_aux_loss' in final and 'train_reward' in final


@pytest.mark.slow
def test_attention_smoke_config_runs_from_the_command_line(tmp_path):
  result = run_module('dl10_jax.main', '--config', 'configs/attention.py:smoke',
                      '--workdir', str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert any('eval_accuracy' in e for e in read_metrics(tmp_path))


@pytest.mark.parametrize('config,override,message', [
    ('configs/attention.py:smoke', '--config.model.attention=glimpse',
     "model.attention='glimpse' is unknown; allowed: soft, reinforce, gumbel, topk"),
    ('configs/transformer.py:smoke', '--config.model.attention_impl=flash',
     "attention_impl='flash' is not supported; allowed: xla"),
])
@pytest.mark.slow
def test_a_bad_attention_field_ends_the_run_with_one_line(config, override, message, tmp_path):
  result = run_module('dl10_jax.main', '--config', config, override, '--workdir', str(tmp_path))
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1 and message in lines[0], result.stderr
