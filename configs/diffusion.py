"""DDPM (Ho et al. 2020) with a small U-Net on Fashion-MNIST (offline default), 28x28 grey.

eps-prediction with the cosine schedule over T = 1000 (Nichol & Dhariwal 2021), Min-SNR-5 loss
weighting (Hang et al. 2023), Adam with warmup and a cosine decay, an EMA of the weights for eval
and sampling; DDIM (50 steps, eta 0) samples for the quality metric and the grid. Native 28x28
images (28 -> 14 -> 7 in the U-Net, attention at 7x7). Sized for ~60 minutes on 2 CPU cores (see
num_train_steps): 16 base channels, because the 28x28 level costs most (32 channels made a step
2.7x slower).
Every eval samples one image per eval example and scores them with classifier_fid: a Fréchet
distance in the features of this project's Fashion-MNIST classifier, NOT Inception-FID
(dl10_jax/train/image_quality.py; the first run trains and caches that classifier, 2-5 minutes;
--config.quality_metric=False turns the metric off).
Sample grids go to WORKDIR/samples/ and TensorBoard.

  python -m dl10_jax.main --config configs/diffusion.py --workdir runs/diffusion
  python -m dl10_jax.sample --workdir runs/diffusion --num_samples 2000 --out grid.png \
      --sampler ddim --steps 50 --eta 0 --quality
  python -m dl10_jax.main --config configs/diffusion.py:mnist --workdir runs/diffusion_mnist
  python -m dl10_jax.main --config configs/diffusion.py:cifar10 --workdir runs/diffusion_cifar
  python -m dl10_jax.main --config configs/diffusion.py:smoke --workdir /tmp/diffusion_smoke

Variants (comma-separated): smoke (seconds), mnist (IDX or TFDS), cifar10 (TFDS, 32x32x3).
"""

import ml_collections

from dl10_jax import config_lib

VARIANTS = ('smoke', 'mnist', 'cifar10')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  variants = {'mnist': _mnist, 'cifar10': _cifar10, 'smoke': _smoke}  # Smoke shrinks the rest.
  return config_lib.apply_variants(_recipe(), args, variants)


def _unet() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'name': 'unet',
      'channels': 16,
      'channel_mults': (1, 2, 4),  # 28x28 (16 ch), 14x14 (32), 7x7 (64): 0.65 M parameters.
      'num_res_blocks': 1,
      'attention_resolutions': (7,),  # Self-attention at 7x7 (49 positions), and in the middle.
      'head_channels': 32,
      'num_groups': 8,
      'dropout': 0.0,  # Ho et al.: 0.1 on CIFAR-10; a 1-hour run does not overfit.
      'attention_impl': 'xla',
      'conv_impl': 'auto',
      'remat': 'none',  # none | full | dots | dots_no_batch: recompute blocks in the backward.
  })


def _ddpm() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'num_timesteps': 1000,
      'schedule': 'cosine',  # linear (Ho et al.) | cosine (Nichol & Dhariwal)
      'prediction': 'eps',  # eps | v
      # uniform (Ho et al.'s simple loss) | min_snr (Hang et al. 2023: weight min(SNR, gamma)
      # on the x_0 error; converges ~3x faster in their runs).
      'loss_weighting': 'min_snr',
      'min_snr_gamma': 5.0,
      'ema_decay': 0.999,  # With the ramp min(decay, (1 + t) / (10 + t)).
      'eval_sampler': 'ddim',  # ddim | ddpm (all T steps: 20x slower)
      'eval_steps': 50,
      'eval_eta': 0.0,
  })


def _recipe() -> ml_collections.ConfigDict:
  """The 60-minute Fashion-MNIST run."""
  config = config_lib.base_config()
  config.objective = 'diffusion'
  config.model = _unet()
  config.diffusion = _ddpm()
  # classifier_fid / classifier_confidence / class_histogram_ratio at every eval (28x28 grey
  # images only); '' reads the classifier from $DL10_CACHE_DIR or ~/.cache/dl10_jax.
  config.quality_metric = True
  config.quality_classifier_dir = ''

  config.dataset.name = 'fashion_mnist'
  # 2,000 eval images, and as many 50-step DDIM samples at every eval: the DCGAN's protocol.
  config.dataset.num_eval_examples = 2000
  config.batch_size = 64
  config.eval_batch_size = 500
  # Whole batches: the U-Net has no batch statistics, so micro-batches would give the same update,
  # but XLA's CPU convolutions inside their scan run ~10x slower (measured with 32 channels:
  # 55 s vs 5 s a step).
  config.microbatch_size = 0
  config.cpu_devices = 2  # Half the batch on each of 2 CPU devices: ~1.17x on 2 cores.
  # ~3.9 steps/s on 2 idle CPU cores (batch 64, 0.65 M parameters): 50.5 minutes on an AMD EPYC
  # with one eval at the end (experiments/diffusion/README.md); the halfway eval adds ~3.
  config.num_train_steps = 11000
  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.schedule = 'warmup_cosine'
  config.warmup_steps = 200
  config.grad_clip_norm = 1.0  # Ho et al.
  config.log_every_steps = 100
  config.eval_every_steps = 5500  # Halfway and at the end.
  config.checkpoint_every_steps = 500
  return config


def _mnist(config: ml_collections.ConfigDict) -> None:
  config.dataset.name = 'mnist'
  config.quality_metric = False  # The classifier knows clothes: on digits its scores mean little.


def _cifar10(config: ml_collections.ConfigDict) -> None:
  config.dataset.name = 'cifar10'
  # 32 -> 16 -> 8. Sized for an accelerator: on 2 CPU cores a step takes several seconds.
  config.model.update(channels=64, channel_mults=(1, 2, 2), attention_resolutions=(8,))
  config.quality_metric = False  # The metric is for 28x28 grey images.


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A seconds-long run on a slice of the data, used by the tests."""
  # 28 -> 14; attention only in the middle (14x14): at 196 positions it costs as much as the
  # rest of this tiny network.
  config.model.update(channels=8, channel_mults=(1, 2), attention_resolutions=(),
                      head_channels=8, num_groups=4)
  config.diffusion.update(num_timesteps=100, eval_steps=5)
  config.quality_metric = False
  config.dataset.update(num_train_examples=256, num_eval_examples=64)
  config.update(batch_size=32, eval_batch_size=64, num_train_steps=16, warmup_steps=2,
                eval_every_steps=8, log_every_steps=2, checkpoint_every_steps=4,
                progress_bar=False)
