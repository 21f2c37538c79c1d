"""Parameter and MAC counts: by hand, and the analytic walk against XLA's compiled cost analysis."""

import importlib.util
import json
import subprocess
import sys

import flax.linen as nn
import pytest
from conftest import ROOT

from configs import cnn as cnn_config
from configs import resnet as resnet_config
from dl10_jax import models
from dl10_jax.errors import ConfigError
from dl10_jax.models import complexity
from dl10_jax.models.layers import Conv2D
from dl10_jax.models.mobilenet import MobileNetV1, MobileNetV2

FMNIST = (28, 28, 1)


def _model(config_module):
  config = config_module.get_config()
  config.model.num_classes = 10  # -1 (from the data) in some configs.
  return models.build(config.model)


def test_one_conv_and_one_dense_by_hand():
  # 9x9x4 -> SAME, stride 2 -> 5x5x8; each output sums 3*3*4 products.
  assert complexity.count_macs(Conv2D(8, (3, 3), strides=2, padding='SAME'), (9, 9, 4)) == \
      5 * 5 * 8 * (3 * 3 * 4)
  # Depthwise: one input channel per output, 6x6x16 outputs of VALID 3x3 on 8x8.
  depthwise = Conv2D(16, (3, 3), feature_group_count=16)
  assert complexity.count_macs(depthwise, (8, 8, 16)) == 6 * 6 * 16 * 9
  assert complexity.count_macs(nn.Dense(10), (20,)) == 20 * 10
  assert complexity.count_macs(nn.Dense(10), (3, 20)) == 3 * 20 * 10  # Leading dims multiply.
  # Without padding taps: a 3x3 SAME conv on 4 pixels per side sees 2 + 3 + 3 + 2 of 12 taps.
  assert complexity.count_macs(Conv2D(8, (3, 3), padding='SAME'), (4, 4, 2),
                               padding_taps=False) == 10 * 10 * 2 * 8


@pytest.mark.parametrize('layer, shape', [
    (Conv2D(8, (3, 3), use_bias=False), (9, 9, 4)),
    (Conv2D(8, (3, 3), strides=2, padding='SAME', use_bias=False), (8, 8, 4)),
    (Conv2D(8, (3, 3), padding='SAME', use_bias=False), (7, 7, 4)),
    (Conv2D(16, (3, 3), strides=2, padding='SAME', feature_group_count=16, use_bias=False),
     (7, 7, 16)),
    (nn.Conv(8, (3, 3), strides=2, padding='SAME', use_bias=False), (7, 7, 4)),
    (Conv2D(8, (7, 7), strides=2, padding='HALF', use_bias=False), (8, 8, 3)),
    (nn.Dense(10, use_bias=False), (20,)),
], ids=['valid', 'same_stride2', 'same_7x7', 'depthwise_stride2', 'flax_conv', 'half_7x7_stride2',
        'dense'])
def test_single_layers_match_xla_exactly(layer, shape):
  """XLA counts 2 FLOPs per MAC, grouped convs per group, and no taps on zero padding."""
  assert complexity.xla_flops(layer, shape) == 2 * complexity.count_macs(layer, shape,
                                                                         padding_taps=False)


def test_cnn_macs_by_hand():
  # conv 3x3 1->32 (26x26 out), conv 3x3 32->64 (24x24), max-pool to 12x12, dense 9216->128->10.
  by_hand = 26 * 26 * 32 * 9 + 24 * 24 * 64 * 9 * 32 + 12 * 12 * 64 * 128 + 128 * 10
  assert complexity.count_macs(_model(cnn_config), FMNIST) == by_hand == 11_992_448


def test_mobilenets_match_the_papers_mult_adds():
  """The papers' ImageNet models (224x224x3, 1000 classes): 569 M and 300 M mult-adds."""
  v1 = MobileNetV1(num_classes=1000, small_input=False)
  v2 = MobileNetV2(num_classes=1000, small_input=False)
  assert round(complexity.count_macs(v1, (224, 224, 3)) / 1e6) == 569
  assert round(complexity.count_macs(v2, (224, 224, 3)) / 1e6, -1) == 300


def test_resnet20_params():
  model = _model(resnet_config)
  # 'params' only, not 'batch_stats'. The paper's 0.27 M is for RGB; one channel saves 2*9*16.
  assert complexity.count_params(complexity.abstract_variables(model, (32, 32, 3))) == 269_722
  variables = complexity.abstract_variables(model, FMNIST)
  assert complexity.count_params(variables) == 269_722 - 2 * 9 * 16
  with pytest.raises(ConfigError, match="'params' collection"):
    complexity.count_params({'batch_stats': variables['batch_stats']})


@pytest.mark.parametrize('name', ['cnn', 'resnet20', 'mobilenet_v2_0.5'])
def test_macs_agree_with_xla(name):
  """XLA adds BatchNorm, activations and adds (measured: +0.6 % CNN, +2.6 % ResNet-20, +6.5 %
  MobileNetV2) and leaves out padding taps (ResNet-20's 7x7 stage: -18 %); both stay in 10 %."""
  model = {'cnn': lambda: _model(cnn_config), 'resnet20': lambda: _model(resnet_config),
           'mobilenet_v2_0.5': lambda: MobileNetV2(width_multiplier=0.5, small_input=True)}[name]()
  flops = complexity.xla_flops(model, FMNIST)
  assert 1.0 <= flops / (2 * complexity.count_macs(model, FMNIST, padding_taps=False)) <= 1.1
  assert 0.9 <= flops / (2 * complexity.count_macs(model, FMNIST)) <= 1.1


def test_bad_input_shape_is_one_line():
  with pytest.raises(ConfigError, match='input_shape'):
    complexity.count_macs(nn.Dense(3), (0,))


def _fake_run(workdir, config, accuracy, speeds):
  """A workdir as the trainer leaves it: its config.json writer, and metrics.jsonl events."""
  workdir.mkdir()
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  events = [{'step': 10 * (i + 1), 'train_loss': 1.0, 'examples_per_sec': s}
            for i, s in enumerate(speeds)] + [{'step': 10 * len(speeds), 'eval_accuracy': accuracy}]
  (workdir / 'metrics.jsonl').write_text('\n'.join(map(json.dumps, events)) + '\n')


@pytest.mark.slow
def test_model_table_script(tmp_path, capsys):
  cnn = cnn_config.get_config()
  resnet = resnet_config.get_config()
  resnet.model.num_classes = 10  # As the trainer resolves it before writing config.json.
  _fake_run(tmp_path / 'cnn', cnn, 0.9, [0.0, 900.0, 1000.0, 5000.0])
  _fake_run(tmp_path / 'resnet', resnet, 0.925, [300.0, 400.0])
  out = tmp_path / 'plot' / 'accuracy_vs_macs.png'
  result = subprocess.run(
      [sys.executable, 'scripts/model_table.py', '--markdown', '--out', str(out), '--runs',
       f'cnn={tmp_path / "cnn"},resnet20={tmp_path / "resnet"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  rows = [line.split('|')[1:-1] for line in result.stdout.splitlines() if line.startswith('|')]
  assert [c.strip() for c in rows[2]] == ['cnn', '1,199,882', '11.99 M', '90.00%', '1,000']
  assert [c.strip() for c in rows[3]] == ['resnet20', '269,434', '30.82 M', '92.50%', '350']
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  # A missing run is one error line and exit code 2, before anything is drawn.
  spec = importlib.util.spec_from_file_location('model_table', ROOT / 'scripts/model_table.py')
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  with pytest.raises(SystemExit) as exit_info:
    script.main(['--runs', f'cnn={tmp_path / "cnn"},gone={tmp_path / "gone"}'])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == f'error: run directory {tmp_path / "gone"} does not exist; ' \
      'pass the --workdir of a run of dl10_jax.main\n'
