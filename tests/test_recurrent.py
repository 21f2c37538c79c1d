"""Recurrent models: the LSTM equals torch.nn.LSTM, masks, shapes, and both cells learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl10_jax.models import recurrent


def _torch_lstm_from(params, num_layers):
  """A torch.nn.LSTM holding the same weights (torch keeps two biases: ours + zeros)."""
  import torch
  first = params['layer0']
  hidden = first['recurrent_kernel'].shape[0]
  lstm = torch.nn.LSTM(first['input']['kernel'].shape[0], hidden, num_layers=num_layers,
                       batch_first=True).double()
  with torch.no_grad():
    for layer in range(num_layers):
      p = params[f'layer{layer}']
      t = lambda x: torch.from_numpy(np.asarray(x, np.float64))
      getattr(lstm, f'weight_ih_l{layer}').copy_(t(p['input']['kernel']).T)
      getattr(lstm, f'weight_hh_l{layer}').copy_(t(p['recurrent_kernel']).T)
      getattr(lstm, f'bias_ih_l{layer}').copy_(t(p['input']['bias']))
      getattr(lstm, f'bias_hh_l{layer}').zero_()
  return lstm


@pytest.mark.parametrize('batch,time,features,hidden', [(3, 7, 5, 8), (2, 33, 16, 64)])
def test_lstm_equals_torch_forward_and_gradients(batch, time, features, hidden):
  import torch
  stack = recurrent.RecurrentStack('lstm', hidden, num_layers=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, time, features))
  params = stack.init(jax.random.PRNGKey(1), x, None, False)['params']
  # Non-trivial biases, so the mapping of every gate's bias is checked.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape)
                        if p.ndim == 1 else p, params)
  cotangent = jax.random.normal(jax.random.PRNGKey(3), (batch, time, hidden))

  def loss(params, x):
    return jnp.sum(stack.apply({'params': params}, x, None, False)[0] * cotangent)

  value, (grads, dx) = jax.value_and_grad(loss, argnums=(0, 1))(params, x)

  lstm = _torch_lstm_from(params, 2)
  tx = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_()
  out, _ = lstm(tx)
  torch_value = (out * torch.from_numpy(np.asarray(cotangent, np.float64))).sum()
  torch_value.backward()
  np.testing.assert_allclose(value, torch_value.item(), rtol=1e-5)
  np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-5)
  for layer in range(2):
    g = grads[f'layer{layer}']
    np.testing.assert_allclose(g['input']['kernel'].T,
                               getattr(lstm, f'weight_ih_l{layer}').grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(g['recurrent_kernel'].T,
                               getattr(lstm, f'weight_hh_l{layer}').grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(g['input']['bias'],
                               getattr(lstm, f'bias_ih_l{layer}').grad.numpy(), atol=1e-5)


def test_forget_gate_bias_starts_at_one_and_output_gate_reads_the_input():
  layer = recurrent.RecurrentLayer('lstm', 4)
  x = jnp.ones((1, 3, 2))
  params = layer.init(jax.random.PRNGKey(0), x)['params']
  np.testing.assert_array_equal(params['input']['bias'], [0] * 4 + [1] * 4 + [0] * 8)
  # With zero input weights except the output gate's, the output depends on x through o only.
  zeros = jax.tree.map(jnp.zeros_like, params)
  probe = zeros['input']['kernel'].at[:, 12:].set(1.0)
  probe_params = dict(zeros, input={'kernel': probe, 'bias': zeros['input']['bias']})
  h, _ = layer.apply({'params': probe_params}, x)
  np.testing.assert_allclose(h, 0.0, atol=1e-7)  # tanh(c) = 0 since the cell never opens.


@pytest.mark.parametrize('cell', ['rnn', 'lstm'])
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('pooling', ['last', 'mean'])
def test_padding_gives_the_result_of_the_unpadded_sequence(cell, bidirectional, pooling):
  model = recurrent.RecurrentClassifier(num_classes=3, vocab_size=20, cell=cell, embed_dim=8,
                                        hidden_size=8, num_layers=2,
                                        bidirectional=bidirectional, pooling=pooling)
  tokens = jnp.array([[5, 3, 9, 2, 7]])
  padded = jnp.array([[5, 3, 9, 2, 7, 0, 0, 0]])
  params = model.init(jax.random.PRNGKey(0), padded)
  np.testing.assert_allclose(model.apply(params, padded), model.apply(params, tokens), atol=1e-6)
  assert model.apply(params, jnp.concatenate([padded, padded])).shape == (2, 3)


def test_images_are_read_as_rows_or_pixels():
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
  for steps in ('rows', 'pixels'):
    model = recurrent.RecurrentClassifier(num_classes=10, cell='rnn', hidden_size=16,
                                          num_layers=1, image_steps=steps)
    params = model.init(jax.random.PRNGKey(0), images)['params']
    assert params['RecurrentStack_0']['layer0']['input']['kernel'].shape == \
        ((28, 16) if steps == 'rows' else (1, 16))
    assert model.apply({'params': params}, images).shape == (4, 10)


@pytest.mark.parametrize('cell', ['rnn', 'lstm'])
def test_language_model_extend_equals_the_full_pass(cell):
  model = recurrent.RecurrentLM(vocab_size=11, cell=cell, embed_dim=8, hidden_size=16,
                                num_layers=2)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, 11)
  params = model.init(jax.random.PRNGKey(1), tokens)
  full = model.apply(params, tokens)
  cache = model.init_cache(2, 9)
  logits, cache = model.apply(params, tokens[:, :4], cache, 0, 4, method=model.extend)
  steps = [logits]
  for t in range(4, 9):
    logits, cache = model.apply(params, tokens[:, t:t + 1], cache, t, 1, method=model.extend)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


@pytest.mark.parametrize('cell', ['rnn', 'lstm'])
@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('reverse', [False, True])
def test_custom_vjp_recurrence_equals_jax_autodiff_of_the_scan(cell, masked, reverse):
  gates = 4 if cell == 'lstm' else 1
  t, b, h = 9, 3, 5
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  xw = jax.random.normal(keys[0], (t, b, gates * h))
  w_hh = 0.5 * jax.random.normal(keys[1], (h, gates * h))
  carry = tuple(jax.random.normal(k, (b, h)) for k in keys[2:2 + (2 if cell == 'lstm' else 1)])
  mask = (jax.random.uniform(keys[4], (t, b)) > 0.3).astype(jnp.float32) if masked else None

  def loss(fn, xw, w_hh, carry):
    hs, final = fn(xw, w_hh, carry)
    return jnp.sum(hs * jnp.arange(h)[None, None]) + sum(jnp.sum(x * x) for x in final)

  def reference(xw, w_hh, carry):
    flip = lambda x: None if x is None else x[::-1]
    hs, final = recurrent.reference_recurrence(cell, flip(xw) if reverse else xw, w_hh, carry,
                                               flip(mask) if reverse else mask)
    return (hs[::-1] if reverse else hs), final

  fast = lambda xw, w_hh, carry: recurrent.recurrence(cell, xw, w_hh, carry, mask, reverse)
  got = jax.value_and_grad(lambda *a: loss(fast, *a), argnums=(0, 1, 2))(xw, w_hh, carry)
  want = jax.value_and_grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2))(xw, w_hh, carry)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
