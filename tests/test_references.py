"""The models against definitions from outside this project: torchvision's ResNet, MobileNetV2 and
ShuffleNetV2 and torch.nn.RNN (weights copied in), the RoFormer formula of rotary positions,
exhaustive search for beam search, numpy / SciPy for classifier-FID's moments and distance, and
exact match by its definition.

The project's own tests compare a fast path with its own reference; these catch a reference that is
itself wrong (a convention that differs from the paper or the library everyone compares with).
"""

import functools
import itertools
import re

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
import torchvision

from dl10_jax.models import decoding, mobilenet, recurrent, resnet
from dl10_jax.models.layers import rotary
from dl10_jax.train import image_quality
from dl10_jax.train.seq2seq import exact_match


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
  """PyTorch on one thread: its two threads spin against JAX's and were 40x slower here."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  torch.manual_seed(0)
  yield
  torch.set_num_threads(threads)


# --- Vision models: torchvision's weights copied into our parameter tree. ---

def _resnet_path(name):
  """torchvision ResNet module name -> our module path."""
  if m := re.fullmatch(r'layer(\d)\.(\d+)\.(conv|bn)(\d)', name):  # conv1..3, bn1..3 of a block.
    kind = 'Conv2D' if m[3] == 'conv' else 'BatchNorm'
    return f'stage{m[1]}_block{int(m[2]) + 1}', f'{kind}_{int(m[4]) - 1}'
  if m := re.fullmatch(r'layer(\d)\.(\d+)\.downsample\.([01])', name):
    return f'stage{m[1]}_block{int(m[2]) + 1}', 'Shortcut_0', ('conv', 'bn')[int(m[3])]
  return {'conv1': ('stem',), 'bn1': ('stem_bn',), 'fc': ('head',)}[name]


def _mobilenet_v2_path(name):
  """torchvision MobileNetV2: features.0 stem, .1-.17 the blocks, .18 the last 1x1 conv."""
  if name == 'classifier.1':
    return ('head',)
  if m := re.fullmatch(r'features\.(\d+)\.([01])', name):  # Conv2dNormActivation: conv, bn.
    return 'stem' if m[1] == '0' else 'last', ('conv', 'bn')[int(m[2])]
  m = re.fullmatch(r'features\.(\d+)\.conv\.(\d)(?:\.([01]))?', name)
  block, i = f'block{m[1]}', int(m[2])
  layers = ('dw', 'project') if m[1] == '1' else ('expand', 'dw', 'project')  # t = 1: no expand.
  if m[3] is not None:  # conv.i is a Conv2dNormActivation (conv.i.0 conv, conv.i.1 bn).
    return block, layers[i], ('conv', 'bn')[int(m[3])]
  return block, 'project', 'conv' if i == len(layers) - 1 else 'bn'  # The linear projection.


_SHUFFLE_BRANCHES = {('branch1', 0): ('branch1_dw', 'conv'), ('branch1', 1): ('branch1_dw', 'bn'),
                     ('branch1', 2): ('branch1_pw', 'conv'), ('branch1', 3): ('branch1_pw', 'bn'),
                     ('branch2', 0): ('branch2_pw1', 'conv'), ('branch2', 1): ('branch2_pw1', 'bn'),
                     ('branch2', 3): ('branch2_dw', 'conv'), ('branch2', 4): ('branch2_dw', 'bn'),
                     ('branch2', 5): ('branch2_pw2', 'conv'), ('branch2', 6): ('branch2_pw2', 'bn')}


def _shufflenet_path(name):
  if m := re.fullmatch(r'stage(\d)\.(\d+)\.(branch[12])\.(\d)', name):
    return f'stage{m[1]}_unit{int(m[2]) + 1}', *_SHUFFLE_BRANCHES[m[3], int(m[4])]
  if m := re.fullmatch(r'(conv1|conv5)\.([01])', name):
    return 'stem' if m[1] == 'conv1' else 'conv5', ('conv', 'bn')[int(m[2])]
  return {'fc': ('head',)}[name]


def _randomize_batch_norm(model):
  """Running statistics and affine parameters away from (0, 1), so that eval mode matters."""
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.2)
  return model.eval()


def _variables_from_torch(model, path_of, shapes):
  """{'params', 'batch_stats'} from a torchvision model; `path_of` maps its module names to ours.

  Conv weights [O, I/groups, kh, kw] -> HWIO kernels, Linear [out, in] -> [in, out]; every leaf of
  `shapes` (our init's) must be filled, with its shape.
  """
  variables = {'params': {}, 'batch_stats': {}}

  def put(collection, path, leaf, value):
    node = variables[collection]
    for key in path:
      node = node.setdefault(key, {})
    assert leaf not in node, (path, leaf)
    node[leaf] = jnp.asarray(value.detach().numpy())

  for name, module in model.named_modules():
    if isinstance(module, torch.nn.Conv2d):
      assert module.bias is None
      put('params', path_of(name), 'kernel', module.weight.permute(2, 3, 1, 0))
    elif isinstance(module, torch.nn.Linear):
      put('params', path_of(name), 'kernel', module.weight.T)
      put('params', path_of(name), 'bias', module.bias)
    elif isinstance(module, torch.nn.BatchNorm2d):
      assert module.eps == 1e-5
      put('params', path_of(name), 'scale', module.weight)
      put('params', path_of(name), 'bias', module.bias)
      put('batch_stats', path_of(name), 'mean', module.running_mean)
      put('batch_stats', path_of(name), 'var', module.running_var)
  assert jax.tree.structure(variables) == jax.tree.structure(shapes)
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(shapes)):
    assert got.shape == want.shape
  return variables


VISION = {  # name: (torchvision model, ours, the path map)
    'resnet18': (lambda: torchvision.models.resnet18(num_classes=10),
                 lambda **kw: resnet.ResNet(10, 18, 'imagenet', 'projection', **kw), _resnet_path),
    'resnet50': (lambda: torchvision.models.resnet50(num_classes=10),
                 lambda **kw: resnet.ResNet(10, 50, 'imagenet', 'projection', **kw), _resnet_path),
    'mobilenet_v2': (lambda: torchvision.models.mobilenet_v2(num_classes=10),
                     lambda **kw: mobilenet.MobileNetV2(10, small_input=False, **kw),
                     _mobilenet_v2_path),
    'shufflenet_v2': (lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10),
                      lambda **kw: mobilenet.ShuffleNetV2(10, 0.5, small_input=False, **kw),
                      _shufflenet_path),
}


@pytest.fixture(scope='module')
def images():
  """2 x 3 x 64 x 64: even sizes, where TensorFlow's 'SAME' and PyTorch's padding differ."""
  return torch.randn(2, 3, 64, 64)


def _relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / np.abs(want).max()


@pytest.mark.parametrize('name,conv_impls', [('resnet18', ('xla', 'patches')),
                                             ('resnet50', ('auto',)),
                                             ('mobilenet_v2', ('xla', 'patches')),
                                             ('shufflenet_v2', ('auto',))])
def test_vision_models_equal_torchvision_in_eval_mode(name, conv_impls, images):
  """Our forward in eval mode (running statistics) equals torchvision's with the same weights, for
  each conv_impl: every conv XLA's, every conv the CPU patches path, and 'auto' (on CPU patches
  for 1x1 and depthwise convs, XLA's for the rest)."""
  make_torch, make_ours, path_of = VISION[name]
  reference = _randomize_batch_norm(make_torch())
  with torch.no_grad():
    want = reference(images).numpy()
  x = jnp.asarray(images.permute(0, 2, 3, 1).numpy())  # NCHW -> NHWC
  shapes = jax.eval_shape(make_ours().init, jax.random.PRNGKey(0), x)
  variables = _variables_from_torch(reference, path_of, shapes)
  for impl in conv_impls:
    got = jax.jit(make_ours(conv_impl=impl).apply)(variables, x)
    assert _relative_error(got, want) < 1e-4, impl
  # Batch statistics instead of the running ones give another answer: eval mode was tested.
  with torch.no_grad():
    assert _relative_error(reference.train()(images).numpy(), want) > 1e-2


def test_batch_norm_training_equals_torchs_but_for_the_running_variance(images):
  """A training forward of ResNet-18: the same outputs (normalised by the batch's statistics) and
  running means (flax momentum 0.9 = torch's 0.1). The running variance differs by design of
  flax: it moves towards the biased batch variance, torch's (and the BN paper's) towards the
  unbiased one, n / (n - 1) larger for n = B*H*W values per channel: 0.9 % on ResNet-18's 2x2
  last stage here, negligible at training sizes. Pinned exactly, so a change either way shows."""
  make_torch, make_ours, path_of = VISION['resnet18']
  reference = _randomize_batch_norm(make_torch())
  x = jnp.asarray(images.permute(0, 2, 3, 1).numpy())
  before = _variables_from_torch(reference, path_of,
                                 jax.eval_shape(make_ours().init, jax.random.PRNGKey(0), x))
  counts = {}  # torch BN module name -> n, the values per channel of its batch
  for module_name, module in reference.named_modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.register_forward_hook(lambda m, inputs, _, name=module_name: counts.__setitem__(
          name, inputs[0].numel() // inputs[0].shape[1]))
  with torch.no_grad():
    want = reference.train()(images).numpy()
  got, updated = jax.jit(lambda v, x: make_ours().apply(v, x, train=True,
                                                        mutable=['batch_stats']))(before, x)
  assert _relative_error(got, want) < 1e-4
  stats = lambda tree, name: functools.reduce(dict.get, path_of(name), tree)
  for name, n in counts.items():
    module, old = reference.get_submodule(name), stats(before['batch_stats'], name)
    ours = stats(updated['batch_stats'], name)
    np.testing.assert_allclose(ours['mean'], module.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    biased = (module.running_var.numpy() - 0.9 * old['var']) / 0.1 * (n - 1) / n
    np.testing.assert_allclose(ours['var'], 0.9 * old['var'] + 0.1 * biased, rtol=1e-5)
  assert min(counts.values()) == 8  # 2 images x 2 x 2: there torch's variance is 1/7 higher.


# --- Rotary positions (layers.rotary) against the RoFormer formula. ---

def _rotary_reference(x, positions, pairing, base=10_000.0):
  """Su et al. 2021, eq. 34, written out: feature pair i of a vector at position m turns by the
  angle m theta_i, theta_i = base^(-2i/d). RoFormer pairs (x_2i, x_2i+1) ('interleaved'); GPT-NeoX
  and Hugging Face's `rotate_half` pair (x_i, x_i+d/2) ('halves'). x [T, D] float64."""
  d = x.shape[-1]
  out = np.empty_like(x)
  for t, m in enumerate(positions):
    for i in range(d // 2):
      a, b = (2 * i, 2 * i + 1) if pairing == 'interleaved' else (i, i + d // 2)
      angle = m * base ** (-2 * i / d)
      out[t, a] = x[t, a] * np.cos(angle) - x[t, b] * np.sin(angle)
      out[t, b] = x[t, a] * np.sin(angle) + x[t, b] * np.cos(angle)
  return out


def test_rotary_is_the_roformer_rotation_of_split_halves():
  """layers.rotary pairs feature i with i + d/2 (GPT-NeoX / HF rotate_half), not RoFormer's
  (2i, 2i+1): the same function up to a fixed permutation of q's and k's features."""
  d, positions = 8, np.array([0, 1, 5, 17, 40])
  x = np.random.default_rng(0).normal(size=(len(positions), d))
  got = np.asarray(rotary(jnp.asarray(x, jnp.float32)[None, :, None], jnp.asarray(positions)))
  got = got[0, :, 0]
  np.testing.assert_allclose(got, _rotary_reference(x, positions, 'halves'), atol=1e-5)
  assert np.abs(got - _rotary_reference(x, positions, 'interleaved')).max() > 0.5
  # Interleaved features moved to halves (x_0, x_2, ..., x_1, x_3, ...) and back: RoFormer's.
  to_halves = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
  permuted = np.asarray(rotary(jnp.asarray(x[:, to_halves], jnp.float32)[None, :, None],
                               jnp.asarray(positions)))[0, :, 0]
  np.testing.assert_allclose(permuted[:, np.argsort(to_halves)],
                             _rotary_reference(x, positions, 'interleaved'), atol=1e-5)


@pytest.mark.parametrize('shape,start', [((2, 7, 3, 8), 0), ((1, 128, 4, 32), 0),
                                         ((3, 5, 2, 64), 1000)])
def test_rotary_static_positions_equal_traced_ones(shape, start):
  """Positions known at trace time become constant cos/sin tables (no trigonometry left in the
  step), exact to float32 at any position; they equal the traced float32 computation in value
  and in the gradient with respect to x (within its angle error at large positions)."""
  x, g = jax.random.normal(jax.random.PRNGKey(0), (2, *shape))
  static = start + np.arange(shape[1])
  assert 'cos' not in jax.jit(lambda x: rotary(x, static)).lower(x).as_text()
  assert 'cos' in jax.jit(rotary).lower(x, jnp.asarray(static)).as_text()
  exact = _rotary_reference(np.asarray(x[0, :, 0], np.float64), static, 'halves')
  np.testing.assert_allclose(rotary(x, static)[0, :, 0], exact, rtol=1e-6, atol=1e-6)
  tolerance = 1e-6 + 3e-7 * (start + shape[1])  # The traced path's float32 angles drift.
  loss = lambda x, p: (rotary(x, p) * g).sum()
  for fn in (rotary, jax.grad(loss)):
    np.testing.assert_allclose(jax.jit(lambda x: fn(x, static))(x),
                               jax.jit(fn)(x, jnp.asarray(static)), atol=tolerance)


def test_rotary_scores_depend_only_on_the_offset():
  """q . k of positions (m, n) equals that of (m + s, n + s), and changes with n - m."""
  q, k = np.random.default_rng(1).normal(size=(2, 1, 1, 1, 16)).astype(np.float32)
  rotate = jax.jit(rotary)
  turn = lambda x, m: np.asarray(rotate(jnp.asarray(x), jnp.asarray([m])))[0, 0, 0]
  score = lambda m, n: float(turn(q, m) @ turn(k, n))
  for m, n in [(0, 3), (7, 2), (5, 5)]:
    for s in (1, 11, 100):
      assert score(m + s, n + s) == pytest.approx(score(m, n), abs=1e-4)
  assert abs(score(0, 3) - score(0, 4)) > 1e-2


# --- Beam search against exhaustive search. ---

V, MAX_LEN, SOURCES = 5, 3, 16  # Tokens: 0 pad, 1 BOS, 2 EOS, 3 and 4; every one may be emitted.


class _TableSeq2Seq(flax.linen.Module):
  """A model whose next-token logits are a random table indexed by (source, the whole prefix): an
  arbitrary distribution over sequences, whose probabilities exhaustive search reads directly."""

  def setup(self):
    self.table = self.param('table', flax.linen.initializers.normal(2.0),
                            (SOURCES, V ** MAX_LEN, V))

  def encode(self, source):
    return source[:, 0], jnp.ones(source.shape, bool)

  def decode(self, memory, valid, decoder_input):
    """decoder_input [B, T] (BOS first) -> logits [B, T, V] from each prefix's base-V code."""
    codes, code = [], jnp.zeros(decoder_input.shape[:1], jnp.int32)
    for t in range(decoder_input.shape[1]):
      code = code * V + decoder_input[:, t]
      codes.append(code)
    return self.table[memory[:, None], jnp.stack(codes, axis=1)]


def _sequence_log_prob(log_p, source, y):
  """log p(y | source) of an output y (up to and including its first EOS), float64."""
  code, total = 1, 0.0  # The prefix code of [BOS].
  for token in y:
    total += log_p[source, code, token]
    if token == 2:
      break
    code = code * V + token
  return total


def _log_probs(table, outputs):
  log_p = scipy.special.log_softmax(np.asarray(table, np.float64), axis=-1)
  return [_sequence_log_prob(log_p, s, y) for s, y in enumerate(np.asarray(outputs))]


def _exhaustive(table, alpha, eos_in_length=True):
  """Per source, over every output (it ends at its first EOS, else at MAX_LEN), the best by
  log p / GNMT's ((5 + |y|) / 6)^alpha (|y| counts the EOS), and its margin to the second."""
  log_p = scipy.special.log_softmax(np.asarray(table, np.float64), axis=-1)
  outputs = {}
  for tokens in itertools.product(range(V), repeat=MAX_LEN):
    n = next((i + 1 for i, y in enumerate(tokens) if y == 2), MAX_LEN)
    outputs[tokens[:n] + (0,) * (MAX_LEN - n)] = n
  best = []
  for s in range(SOURCES):
    scores = {y: _sequence_log_prob(log_p, s, y) / ((5 + n - (not eos_in_length and 2 in y))
                                                    / 6) ** alpha
              for y, n in outputs.items()}
    first, second = sorted(scores, key=scores.get, reverse=True)[:2]
    best.append((first, scores[first] - scores[second]))
  return best


@pytest.fixture(scope='module')
def table_model():
  model = _TableSeq2Seq()
  source = jnp.arange(SOURCES)[:, None]
  return model, model.init(jax.random.PRNGKey(0), source, method=model.encode), source


@pytest.mark.parametrize('alpha', [0.0, 0.6, 2.0])
def test_a_wide_beam_finds_the_exhaustive_optimum(alpha, table_model):
  """With beam V^(MAX_LEN - 1) nothing is pruned: beam search must return, for every source, the
  output exhaustive search ranks first (log p over GNMT's length penalty)."""
  model, variables, source = table_model
  table = np.asarray(variables['params']['table'])
  best = _exhaustive(table, alpha)
  assert min(margin for _, margin in best) > 1e-4  # No near-ties for float32 to flip.
  got = decoding.beam_search(model, variables, source, MAX_LEN, beam_size=V ** (MAX_LEN - 1),
                             alpha=alpha)
  np.testing.assert_array_equal(np.asarray(got), np.array([y for y, _ in best]))
  if alpha == 2.0:  # Winners move (0.6 moves none): a beam that ignored alpha, or left the EOS
    # out of |y|, would fail here.
    for other in (_exhaustive(table, 0.0), _exhaustive(table, alpha, eos_in_length=False)):
      assert any(a != b for (a, _), (b, _) in zip(best, other))


def test_beam_4_beats_or_ties_greedy_and_beam_1_is_greedy(table_model):
  """Ranked by log p (alpha 0), beam 4 is never below greedy here and above it for some sources
  (not a theorem: a beam can prune the greedy path; with this table it never loses)."""
  model, variables, source = table_model
  table = np.asarray(variables['params']['table'])
  greedy = decoding.greedy_decode(model, variables, source, MAX_LEN)
  beam = decoding.beam_search(model, variables, source, MAX_LEN, beam_size=4, alpha=0.0)
  greedy_score, beam_score = _log_probs(table, greedy), _log_probs(table, beam)
  assert all(b >= g - 1e-6 for b, g in zip(beam_score, greedy_score))
  assert any(b > g + 1e-3 for b, g in zip(beam_score, greedy_score))
  np.testing.assert_array_equal(
      decoding.beam_search(model, variables, source, MAX_LEN, beam_size=1, alpha=0.0), greedy)


# --- The Elman RNN against torch.nn.RNN. ---

@pytest.mark.parametrize('padded', [False, True])
def test_elman_rnn_equals_torch_rnn_forward_and_gradients(padded):
  """A 2-layer bidirectional tanh RNN from an initial state, in outputs, final states and the
  gradients of inputs, initial states and every weight; padded: torch's packed sequences (the
  backward direction starts at each sequence's last step). torch keeps two biases, we their sum."""
  batch, time, features, hidden = 3, 6, 4, 5
  lengths = [6, 3, 5] if padded else [6] * 3
  rnn = torch.nn.RNN(features, hidden, num_layers=2, bidirectional=True, batch_first=True).double()
  with torch.no_grad():
    for p in rnn.parameters():
      p.uniform_(-0.6, 0.6)
  rng = np.random.default_rng(2)
  x, cot_out = rng.normal(size=(batch, time, features)), rng.normal(size=(batch, time, 2 * hidden))
  h0, cot_h = rng.normal(size=(2, 4, batch, hidden))  # [layers x directions, B, H]
  cot_out *= np.arange(time)[None, :, None] < np.array(lengths)[:, None, None]

  tx, th0 = (torch.from_numpy(a).requires_grad_() for a in (x, h0))
  packed = torch.nn.utils.rnn.pack_padded_sequence(tx, lengths, batch_first=True,
                                                   enforce_sorted=False)
  out, h_n = rnn(packed, th0)
  out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=time)[0]
  loss = (out * torch.from_numpy(cot_out)).sum() + (h_n * torch.from_numpy(cot_h)).sum()
  loss.backward()

  torch_weight = lambda name: getattr(rnn, name).detach().numpy()
  params = {}
  for layer in range(2):
    for reverse in (False, True):
      sfx = f'_l{layer}' + ('_reverse' if reverse else '')
      params[f'layer{layer}' + ('_reverse' if reverse else '')] = {
          'input': {'kernel': torch_weight(f'weight_ih{sfx}').T,
                    'bias': torch_weight(f'bias_ih{sfx}') + torch_weight(f'bias_hh{sfx}')},
          'recurrent_kernel': torch_weight(f'weight_hh{sfx}').T}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  stack = recurrent.RecurrentStack('rnn', hidden, num_layers=2, bidirectional=True)
  mask = jnp.asarray(np.arange(time)[None] < np.array(lengths)[:, None]) if padded else None

  def ours(params, x, h0):
    y, carries = stack.apply({'params': params}, x, mask, False, [(h,) for h in h0])
    return (jnp.sum(y * cot_out) + jnp.sum(jnp.stack([c[0] for c in carries]) * cot_h),
            (y, carries))

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  (value, (y, carries)), (grads, dx, dh0) = jax.jit(jax.value_and_grad(
      ours, argnums=(0, 1, 2), has_aux=True))(params, f32(x), f32(h0))
  close = lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  close(y, out.detach().numpy())
  close(np.stack([c[0] for c in carries]), h_n.detach().numpy())
  close(value, loss.item())
  close(dx, tx.grad.numpy())
  close(dh0, th0.grad.numpy())
  for name, g in grads.items():
    sfx = f'_l{name[5]}' + ('_reverse' if 'reverse' in name else '')
    grad = lambda n: getattr(rnn, n + sfx).grad.numpy()
    close(g['input']['kernel'], grad('weight_ih').T)
    close(g['recurrent_kernel'], grad('weight_hh').T)
    close(g['input']['bias'], grad('bias_ih'))  # = grad('bias_hh'): both enter as their sum.


# --- classifier-FID's moments and distance; exact match. ---

def test_classifier_fid_moments_and_distance_equal_numpy_and_scipy():
  """Mean and covariance from moment_sums (masked rows left out) equal np.mean / np.cov, and the
  distance equals |m1 - m2|^2 + tr(C1 + C2 - 2 sqrtm(C1 C2)) with SciPy's sqrtm."""
  rng = np.random.default_rng(3)
  mixing = rng.normal(size=(2, 6, 6))
  real = 3 + rng.normal(size=(60, 6)) @ mixing[0]  # Features with a mean, as ReLU features have.
  fake = 2.5 + rng.normal(size=(40, 6)) @ mixing[1]
  sums, moment_sums = [], jax.jit(image_quality.moment_sums)
  for features in (real, fake):  # Each padded to 68 rows of junk, which the mask leaves out.
    rows = np.concatenate([features, rng.normal(size=(68 - len(features), 6)) * 100])
    mask = np.arange(68) < len(features)
    sums.append(jax.device_get(moment_sums(jnp.asarray(rows, jnp.float32), jnp.zeros((68, 3)),
                                           jnp.asarray(mask))))
  for s, features in zip(sums, (real, fake)):
    mean, cov = image_quality._gaussian(s)
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cov, np.cov(features, rowvar=False), rtol=1e-5, atol=1e-5)
  (m1, c1), (m2, c2) = [(f.mean(axis=0), np.cov(f, rowvar=False)) for f in (real, fake)]
  want = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
  assert image_quality.summarize(*sums)['classifier_fid'] == pytest.approx(want, rel=1e-5)


def test_exact_match_counts_up_to_the_targets_eos():
  """The whole sequence up to and including EOS must be right; after the EOS nothing counts."""
  eos = 2
  target = [5, 6, 7, eos, 0, 0]
  cases = {(5, 6, 7, eos, 0, 0): True,
           (5, 6, 7, eos, 9, 4): True,  # After EOS: ignored.
           (5, 9, 7, eos, 0, 0): False,  # A wrong token.
           (5, 6, eos, 0, 0, 0): False,  # An early EOS.
           (5, 6, 7, 8, eos, 0): False,  # A late EOS.
           (5, 6, 7, 0, 0, 0): False,  # No EOS.
           (5, 6, 7, 8, 8, 8): False}
  full = [5, 6, 7, 8, 9, eos]  # A target that fills the length.
  cases.update({tuple(full): True, tuple(full[:-1] + [9]): False})
  targets = [target] * (len(cases) - 2) + [full] * 2
  got = jax.jit(exact_match, static_argnums=2)(jnp.asarray(list(cases)), jnp.asarray(targets), eos)
  assert list(np.asarray(got)) == list(cases.values())
