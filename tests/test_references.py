"""The models against definitions from outside this project: torchvision's ResNet, MobileNetV2 and
ShuffleNetV2 and torch.nn.RNN (weights copied in), the RoFormer formula of rotary positions,
exhaustive search for beam search, numpy / SciPy for classifier-FID's moments and distance.

The project's own tests compare a fast path with its own reference; these catch a reference that is
itself wrong (a convention that differs from the paper or the library everyone compares with).
"""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from dl10_jax.models import mobilenet, resnet



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


@pytest.mark.parametrize('name,conv_impls', [('resnet18', ('auto', 'xla', 'patches')),
                                             ('resnet50', ('auto',)),
                                             ('mobilenet_v2', ('auto', 'patches')),
                                             ('shufflenet_v2', ('auto',))])
def test_vision_models_equal_torchvision_in_eval_mode(name, conv_impls, images):
  """Our forward in eval mode (running statistics) equals torchvision's with the same weights, for
  each conv_impl (on CPU 'auto' takes patches for 1x1 and depthwise convs, XLA's for the rest)."""
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
