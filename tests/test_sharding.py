"""Data, FSDP and tensor-parallel meshes on 8 fake CPU devices: the same numbers as one device,
parameters really split, checkpoints restored across meshes, clear errors for impossible meshes."""

import functools
import math
import re

import jax
import ml_collections
import numpy as np
import pytest

from configs import gpt as gpt_config
from configs import lstm as lstm_config
from configs import resnet as resnet_config
from conftest import read_metrics
from dl10_jax.errors import ConfigError
from dl10_jax.train import sharding
from dl10_jax.train.experiment import build_experiment
from dl10_jax.train.trainer import train_and_evaluate

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]  # (data, fsdp, tensor)
CONFIGS = {'gpt': gpt_config, 'resnet': resnet_config, 'lstm': lstm_config}


def _config(name: str, mesh=(-1, 1, 1)) -> ml_collections.ConfigDict:
  config = CONFIGS[name].get_config('smoke')
  config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  if name == 'resnet':
    config.dataset.augment = ''  # Fewer ops to compile; augmentation is not what is tested.
  return config


def _train(config: ml_collections.ConfigDict, devices=None, steps: int = 3):
  """`steps` updates of the real train step: (losses, final state, experiment)."""
  exp = build_experiment(config, devices)
  state = exp.init(jax.random.PRNGKey(config.seed), exp.example_batch())
  batches = exp.train_iterator()
  losses = []
  for _ in range(steps):
    state, metrics = exp.train_step(state, sharding.to_global(next(batches), exp.mesh))
    losses.append(metrics['train_loss'])
  return np.asarray(jax.device_get(losses)), state, exp


@functools.cache
def _one_device_losses(name: str) -> np.ndarray:
  return _train(_config(name), jax.devices()[:1])[0]


def _bytes_on(device, tree) -> int:
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == device)


@pytest.mark.parametrize('mesh', MESHES, ids=lambda m: 'x'.join(map(str, m)))
@pytest.mark.parametrize('name', ['gpt', 'resnet'])
@pytest.mark.slow
def test_every_mesh_trains_like_one_device(name, mesh):
  losses, state, exp = _train(_config(name, mesh))
  np.testing.assert_allclose(losses, _one_device_losses(name), rtol=2e-5)
  assert dict(exp.mesh.shape) == dict(zip(sharding.AXES, mesh))

  # Each device holds its share of the parameters (small arrays stay whole: about 1/fsdp + a bit).
  params = state.params
  share = _bytes_on(jax.devices()[0], params) / sum(x.nbytes for x in jax.tree.leaves(params))
  _, fsdp, tensor = mesh
  assert 1 / (fsdp * tensor) <= share < 1 / fsdp + 0.2, share
  # Optimizer moments are laid out like their parameters.
  assert _bytes_on(jax.devices()[0], state.opt_state) < 2.5 * _bytes_on(jax.devices()[0], params)


def test_the_lstm_lm_on_two_cpu_devices_trains_like_one():
  # configs/lstm.py runs on two CPU devices (cpu_devices=2): each scans half the batch.
  assert lstm_config.get_config('smoke').cpu_devices == 2
  losses, _, exp = _train(_config('lstm'), jax.devices()[:2])
  assert exp.mesh.devices.size == 2
  np.testing.assert_allclose(losses, _one_device_losses('lstm'), rtol=2e-5)


def test_fsdp_and_tensor_layouts_of_gpt():
  _, state, exp = _train(_config('gpt', (2, 2, 2)), steps=1)
  block = state.params['block0']
  qkv = block['attn']['qkv']['kernel']  # [W, 3, H, D]: heads over tensor, width over fsdp.
  assert qkv.sharding.spec == jax.sharding.PartitionSpec('fsdp', None, 'tensor', None)
  w, _, h, d = qkv.shape
  assert {s.data.shape for s in qkv.addressable_shards} == {(w // 2, 3, h // 2, d)}
  assert block['attn']['proj']['kernel'].sharding.spec[0] == 'tensor'  # [H * D, W]
  assert block['mlp']['fc']['kernel'].sharding.spec[1] == 'tensor'  # [W, 4W]
  assert block['mlp']['proj']['kernel'].sharding.spec[0] == 'tensor'  # [4W, W]
  assert block['ln1']['scale'].sharding.spec == jax.sharding.PartitionSpec(None)  # Small: whole.
  mu = state.opt_state[-1][0].mu['block0']['attn']['qkv']['kernel']  # Adam's first moment.
  assert mu.sharding.spec == qkv.sharding.spec


def test_transformer_heads_split_over_tensor():
  spec = sharding.array_spec('params/encoder/block0/self_attn/query/kernel', (32, 4, 8),
                             _mesh(tensor=2))
  assert spec == jax.sharding.PartitionSpec(None, 'tensor', None)
  spec = sharding.array_spec('opt_state/0/mu/block0/self_attn/out/kernel', (4, 8, 32),
                             _mesh(tensor=2, fsdp=2))
  assert spec == jax.sharding.PartitionSpec('tensor', None, 'fsdp')


def _mesh(**sizes):
  return sharding.make_mesh(ml_collections.ConfigDict({'data': -1, **sizes}))


def test_impossible_meshes_fail_with_one_line():
  with pytest.raises(ConfigError, match='does not fit 8 devices'):
    _mesh(fsdp=3)
  with pytest.raises(ConfigError, match="mesh axis 'model' is unknown; allowed: data, fsdp, tensor"):
    sharding.make_mesh(ml_collections.ConfigDict({'data': -1, 'model': 2}))
  with pytest.raises(ConfigError, match='more than one -1'):
    _mesh(fsdp=-1)
  # GPT smoke has 2 heads: a 4-way tensor split names the axis and the sizes.
  with pytest.raises(ConfigError, match=r'mesh.tensor=4 does not divide dimension \d \(size 2\) '
                     r'of params/block0/attn/qkv/'):
    build_experiment(_config('gpt', (2, 1, 4)))
  # A batch that the batch axes (data x fsdp) do not divide.
  config = _config('gpt', (1, 8, 1))
  config.batch_size = 12
  with pytest.raises(ConfigError, match='batch_size=12 is not divisible by the 8 devices'):
    build_experiment(config)


def test_fsdp_leaves_arrays_it_cannot_divide_whole():
  mesh = _mesh(fsdp=8)
  assert sharding.array_spec('params/x', (65, 33), mesh) == jax.sharding.PartitionSpec(None, None)
  assert sharding.array_spec('params/x', (64, 33), mesh) == jax.sharding.PartitionSpec('fsdp', None)
  assert sharding.array_spec('params/b', (64,), mesh) == jax.sharding.PartitionSpec(None)  # Small.
  assert math.prod((64, 33)) >= sharding.FSDP_MIN_SIZE


@pytest.mark.slow
def test_checkpoint_restores_onto_another_mesh(tmp_path):
  """Saved under (8, 1, 1), resumed under (2, 4, 1): orbax reshards; the run goes on unchanged."""
  def config(mesh, steps):
    c = _config('gpt', mesh)
    c.update(num_train_steps=steps, log_every_steps=1, checkpoint_every_steps=4,
             eval_every_steps=1000, schedule='constant', warmup_steps=0)
    return c
  train_and_evaluate(config((8, 1, 1), 8), tmp_path / 'straight')
  train_and_evaluate(config((8, 1, 1), 4), tmp_path / 'moved')
  final = train_and_evaluate(config((2, 4, 1), 8), tmp_path / 'moved')
  losses = lambda run: [m['train_loss'] for m in read_metrics(tmp_path / run) if 'train_loss' in m]
  assert len(losses('moved')) == 8
  np.testing.assert_allclose(losses('moved'), losses('straight'), rtol=2e-5)
  assert final['eval_loss'] == pytest.approx(
      [m for m in read_metrics(tmp_path / 'straight') if 'eval_loss' in m][-1]['eval_loss'],
      rel=1e-5)


def test_the_tensor_rules_name_layers_that_gpt_and_the_transformer_have():
  """Renaming qkv, proj, fc, query, key, value or out would silently stop tensor parallelism."""
  from dl10_jax.models import gpt, transformer
  tokens = jax.ShapeDtypeStruct((1, 8), np.int32)
  trees = [jax.eval_shape(gpt.GPT(vocab_size=16, num_layers=1, width=16, num_heads=2).init,
                          jax.random.PRNGKey(0), tokens),
           jax.eval_shape(transformer.EncoderDecoder(vocab_size=16, num_layers=1, width=16,
                                                     num_heads=2).init,
                          jax.random.PRNGKey(0), (tokens, tokens))]
  leaves = [(sharding.path_name(p), tuple(x.shape)) for tree in trees
            for p, x in jax.tree_util.tree_leaves_with_path(tree)]
  for pattern, rule in sharding.TENSOR_RULES:
    assert any(sharding.tensor_rule(path, shape) == rule and re.search(pattern, path)
               for path, shape in leaves), pattern


def test_a_tensor_axis_that_splits_nothing_is_named():
  conv = {'params': {'conv0': {'kernel': jax.ShapeDtypeStruct((3, 3, 1, 8), np.float32)}}}
  assert 'mesh.tensor=2 splits nothing' in sharding.unsplit_tensor_axis(conv, _mesh(tensor=2))
  assert sharding.unsplit_tensor_axis(conv, _mesh()) is None
  qkv = {'params': {'attn': {'qkv': {'kernel': jax.ShapeDtypeStruct((16, 3, 2, 8), np.float32)}}}}
  assert sharding.unsplit_tensor_axis(qkv, _mesh(tensor=2)) is None
