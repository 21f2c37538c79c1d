"""Lightweight networks on Fashion-MNIST (offline default), ResNet-20's recipe.

MobileNetV1 (default), MobileNetV2 or ShuffleNetV2 (`dl10_jax/models/mobilenet.py`) in their
small-input form (fewer early strides for 28x28), trained exactly as configs/resnet.py trains
ResNet-20 (SGD + Nesterov, L2 on kernels, warmup + cosine, crops and flips, whole-batch BN; one
recipe, dl10_jax/config_recipes.py), so the accuracy-vs-MACs table compares architectures, not
recipes (experiments/lightweight/).

  python -m dl10_jax.main --config configs/mobilenet.py --workdir runs/mobilenet_v1
  python -m dl10_jax.main --config configs/mobilenet.py:v2 --workdir runs/mobilenet_v2
  python -m dl10_jax.main --config configs/mobilenet.py:shufflenet --workdir runs/shufflenet
  python -m dl10_jax.main --config configs/mobilenet.py:smoke --workdir /tmp/mobilenet_smoke

Variants (comma-separated): v1 (default) | v2 | shufflenet; smoke (seconds). Width:
--config.model.width_multiplier (MobileNets) or --config.model.width (ShuffleNet: 0.5/1.0/1.5/2.0).
"""

import ml_collections

from dl10_jax import config_lib, config_recipes

MODELS = {'v1': 'mobilenet_v1', 'v2': 'mobilenet_v2', 'shufflenet': 'shufflenet_v2'}
VARIANTS = tuple(MODELS) + ('smoke',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  chosen = sorted(args & set(MODELS))
  if len(chosen) > 1:
    raise ValueError(f'choose one model of {", ".join(MODELS)}, not {", ".join(chosen)}')
  family = chosen[0] if chosen else 'v1'
  config = config_recipes.image_classifier('smoke' in args)  # ResNet-20's (configs/resnet.py).
  config.model = ml_collections.ConfigDict({
      'name': MODELS[family],
      'num_classes': -1,
      'small_input': True,
      'conv_impl': 'auto',
  })
  # Widths for >= 4x fewer MACs than ResNet-20 (30.8 M per 28x28 example): MobileNetV1 0.35
  # (~5.7 M), ShuffleNetV2 0.5 (9.0 M); MobileNetV2 0.35 costs 12.8 M with its small-input strides.
  if family == 'shufflenet':
    config.model.width = 0.5
  else:
    config.model.width_multiplier = 0.35
  if family == 'v2':
    config.model.dropout_rate = 0.2
  if 'smoke' in args:
    config.model.update({'width' if family == 'shufflenet' else 'width_multiplier': 0.5})
  return config
