"""The README's "Adding a model" recipe, followed once for real: a model defined and registered
here, a config file written here, trained through `python -m dl10_jax.main` (in process)."""

import textwrap
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from conftest import read_metrics, run_main

from dl10_jax import models

# Step 3: a config is data (ml_collections and config_lib only), with a smoke variant.
CONFIG = '''
from dl10_jax import config_lib

VARIANTS = ('smoke',)


def get_config(arg=None):
  config_lib.parse_arg(arg, VARIANTS)
  config = config_lib.base_config()
  config.model.name = 'toy_mlp'
  config.model.num_classes = -1  # From the data.
  config.model.hidden = 64
  config.dataset.name = 'fashion_mnist'
  config.dataset.num_train_examples = 1024
  config.dataset.num_eval_examples = 512
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_train_steps = 32
  config.optimizer = 'adam'
  config.learning_rate = 3e-3
  config.log_every_steps = 8
  config.checkpoint_every_steps = 32
  config.progress_bar = False
  return config
'''


class ToyMLP(nn.Module):
  """Step 1: hyper-parameters as fields, a `dtype`, `__call__(inputs, train)`; layers named
  mlp/fc and mlp/proj, which tensor parallelism splits; an activity penalty sown as a loss."""
  num_classes: int
  hidden: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x.reshape(x.shape[0], -1).astype(self.dtype)  # [B, H * W * C]
    h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name='fc')(x))  # [B, hidden]
    self.sow('losses', 'activity', 1e-4 * jnp.mean(jnp.square(h)))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='proj')(h)  # [B, classes]


class Toy(nn.Module):
  num_classes: int
  hidden: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return ToyMLP(self.num_classes, self.hidden, self.dtype, name='mlp')(x, train)


def test_a_model_registered_here_trains_through_main(tmp_path, monkeypatch):
  monkeypatch.setitem(models.MODELS, 'toy_mlp', Toy)  # Step 2: the registry.
  config_file = tmp_path / 'toy.py'
  config_file.write_text(textwrap.dedent(CONFIG))
  workdir = tmp_path / 'run'

  result = run_main('--config', f'{config_file}:smoke', '--workdir', str(workdir))
  assert result.returncode == 0, result.stderr

  events = read_metrics(workdir)
  train = [e for e in events if 'train_loss' in e]
  assert [e['step'] for e in train] == [8, 16, 24, 32]
  assert train[-1]['train_loss'] < 0.7 * train[0]['train_loss']
  assert all(e['train_aux_loss'] > 0 for e in train)  # The sown penalty reached the loss.
  final = [e for e in events if 'eval_accuracy' in e][-1]
  assert final['step'] == 32 and final['eval_accuracy'] > 0.5  # Chance is 0.1.
  assert (workdir / 'checkpoints' / '32').is_dir()

