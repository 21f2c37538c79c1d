"""ResNet-20 (He et al. 2015, the CIFAR design) on Fashion-MNIST (offline default).

SGD with Nesterov momentum, L2 weight decay on kernels, warmup + cosine, random crops (2 px) and
horizontal flips as grain transforms. BatchNorm sees whole batches (microbatch_size=0); set
`ghost_batch_norm=True` with a `microbatch_size` to normalise per micro-batch instead. The training
recipe is shared with configs/mobilenet.py (dl10_jax/config_recipes.py: image_classifier).

  python -m dl10_jax.main --config configs/resnet.py --workdir runs/resnet20
  python -m dl10_jax.main --config configs/resnet.py --workdir runs/resnet56 --config.model.depth=56
  python -m dl10_jax.main --config configs/resnet.py --workdir runs/resnet20_cifar \
      --config.dataset.name=cifar10 --config.dataset.crop_padding=4   # TFDS, prepared once
  python -m dl10_jax.main --config configs/resnet.py:smoke --workdir /tmp/resnet_smoke   # seconds

Variants: smoke (seconds). ImageNet ResNets: --config.model.style=imagenet
--config.model.depth=50 --config.model.shortcut=projection.
"""

import ml_collections

from dl10_jax import config_lib, config_recipes

VARIANTS = ('smoke',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  smoke = 'smoke' in config_lib.parse_arg(arg, VARIANTS)
  config = config_recipes.image_classifier(smoke)  # Shared with configs/mobilenet.py.
  config.model = ml_collections.ConfigDict({
      'name': 'resnet',
      'num_classes': -1,  # From the data.
      'depth': 8 if smoke else 20,
      'style': 'cifar',  # cifar (3 stages, 16-64 channels) | imagenet (18/34/50/101/152)
      'shortcut': 'pad',  # The paper's option A for CIFAR; projection for ImageNet.
      'zero_init_residual': False,
      'conv_impl': 'auto',  # XLA's 3x3 convolutions, 1x1 as matmuls on CPU (models/layers.py).
  })
  # Two CPU devices, half the batch each (BatchNorm still sees the whole batch): ~1.15x on 2
  # cores (experiments/benchmarks.md); MobileNetV1 and the CNN, slower on two, keep one.
  config.cpu_devices = 2
  return config
