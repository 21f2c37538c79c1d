"""Seed algorithm 9: ResNet-20 (He et al. 2015, the CIFAR design) on Fashion-MNIST (offline default).

SGD with Nesterov momentum, L2 weight decay on kernels, warmup + cosine, random crops (2 px) and
horizontal flips as grain transforms. BatchNorm sees whole batches (microbatch_size=0); set
`ghost_batch_norm=True` with a `microbatch_size` to normalise per micro-batch instead.

  python -m dl10_jax.main --config configs/resnet.py --workdir runs/resnet20
  python -m dl10_jax.main --config configs/resnet.py --workdir runs/resnet56 --config.model.depth=56
  python -m dl10_jax.main --config configs/resnet.py --workdir runs/resnet20_cifar \
      --config.dataset.name=cifar10 --config.dataset.crop_padding=4   # TFDS, prepared once
  python -m dl10_jax.main --config configs/resnet.py:smoke --workdir /tmp/resnet_smoke   # seconds

Variants: smoke (seconds). ImageNet ResNets: --config.model.style=imagenet
--config.model.depth=50 --config.model.shortcut=projection.
"""

import ml_collections

from dl10_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, ('smoke',))
  config = config_lib.base_config()
  config.model = ml_collections.ConfigDict({
      'name': 'resnet',
      'num_classes': -1,  # From the data.
      'depth': 20,
      'style': 'cifar',  # cifar (3 stages, 16-64 channels) | imagenet (18/34/50/101/152)
      'shortcut': 'pad',  # The paper's option A for CIFAR; projection for ImageNet.
      'zero_init_residual': False,
      'conv_impl': 'auto',  # XLA's 3x3 convolutions, 1x1 as matmuls on CPU (models/layers.py).
  })
  config.dataset.name = 'fashion_mnist'
  config.dataset.augment = 'crop,flip'
  config.dataset.crop_padding = 2
  config.batch_size = 64
  config.eval_batch_size = 1000
  config.microbatch_size = 0  # Whole-batch BatchNorm statistics.
  config.num_epochs = 11  # ~28 min on 2 CPU cores at ~430 examples/s (experiments/resnet).
  config.optimizer = 'sgd'
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  config.learning_rate = 0.05  # 0.1 at batch 128 (He et al.), scaled linearly.
  config.schedule = 'warmup_cosine'
  config.warmup_steps = 200
  config.label_smoothing = 0.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000

  if 'smoke' in args:
    config.model.depth = 8
    config.dataset.num_train_examples = 256
    config.dataset.num_eval_examples = 128
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_epochs = 2
    config.warmup_steps = 2
    config.log_every_steps = 4
    config.checkpoint_every_steps = 8
    config.progress_bar = False
  return config
