"""Config validation: derived step counts, and bad values failing with a message naming them."""

import subprocess
import sys

import jax
import ml_collections
import pytest

from dl10_jax import cli, config_lib
from dl10_jax.data import algorithmic
from dl10_jax.errors import ConfigError
from dl10_jax.train import sharding
from configs import cnn, seq2seq
from conftest import ROOT


def test_epochs_become_steps_and_eval_defaults_to_once_per_epoch():
  config = config_lib.finalize(cnn.get_config(), num_train_examples=60_000, num_data_devices=8)
  assert config.num_train_steps == 4688  # ceil(5 * 60000 / 64): every example 5 times.
  assert config.eval_every_steps == 938
  assert config.microbatch_size == 16  # auto on CPU; the whole batch on accelerators:
  assert config_lib.finalize(cnn.get_config(), 60_000, 8, backend='tpu').microbatch_size == 0
  config = cnn.get_config()
  config.num_train_steps = 10
  assert config_lib.finalize(config, 60_000, 1).num_train_steps == 10


@pytest.mark.parametrize('field,value,message', [
    ('optimizer', 'lion', "optimizer='lion' is not supported; allowed: adam, adamw, sgd"),
    ('schedule', 'step', "schedule='step' is not supported; allowed: constant, cosine"),
    ('dtype', 'float8',
     "dtype='float8' is not supported; allowed: auto, float32, bfloat16, float16"),
    ('batch_size', 12, 'batch_size=12 is not divisible by the 8 devices'),
    ('learning_rate', -1.0, 'learning_rate=-1.0 must be > 0'),
    ('num_epochs', 0.0, 'num_epochs=0.0 must be > 0'),
    ('microbatch_size', 24, 'microbatch_size=24 must divide batch_size=64'),
    ('adam_b2', 1.0, r'adam_b2=1.0 must be in \(0, 1\)'),
])
def test_bad_values_name_the_field_and_what_is_allowed(field, value, message):
  config = cnn.get_config()
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.finalize(config, num_train_examples=60_000, num_data_devices=8)


def test_mesh_uses_every_device_by_default():
  assert len(jax.devices()) == 8  # tests/conftest.py fakes 8 CPU devices.
  mesh = sharding.make_mesh(config_lib.base_config().mesh)
  assert dict(mesh.shape) == {'data': 8, 'fsdp': 1, 'tensor': 1}
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': -1, 'tensor': 2}))
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 1, 'tensor': 2}
  # (More mesh errors in tests/test_sharding.py.)


@pytest.mark.parametrize('path', sorted(p.name for p in (ROOT / 'configs').glob('[!_]*.py')))
def test_every_config_has_the_three_mesh_axes(path):
  """So that --config.mesh.fsdp=4 or .tensor=2 works on any config."""
  _, config = cli.load_config(str(ROOT / 'configs' / path))
  assert dict(config.mesh) == {'data': -1, 'fsdp': 1, 'tensor': 1}


_LOAD_EVERY_CONFIG = """
import pathlib, sys
from dl10_jax import cli
for path in sorted(pathlib.Path('configs').glob('[!_]*.py')):
  module, _ = cli.load_config(str(path))
  for arg in getattr(module, 'VARIANTS', ()):
    cli.load_config(f'{path}:{arg}')
print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'configs') or
                      m.startswith(('dl10_jax.models', 'dl10_jax.data', 'dl10_jax.train')))))
"""


def test_configs_are_data_loading_every_variant_imports_no_jax_model_or_other_config():
  """main, sweeps and tests load configs before (or without) any JAX work; loading one must stay
  cheap. A config reads shared recipes from dl10_jax/config_recipes.py, never from another config
  or from model or data code."""
  result = subprocess.run([sys.executable, '-c', _LOAD_EVERY_CONFIG], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == []


def test_seq2seq_vocabulary_is_the_algorithmic_data_s():
  assert seq2seq.get_config().model.vocab_size == seq2seq.VOCAB_SIZE == algorithmic.VOCAB_SIZE


def test_gpt_block_size_is_one_field_of_model_and_dataset():
  from configs import gpt
  config = gpt.get_config('mini')
  assert config.model.block_size == config.dataset.block_size == 256
  config.dataset.block_size = 64
  assert config.model.block_size == 64
