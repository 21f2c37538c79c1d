"""DCGAN (Radford et al. 2015) on Fashion-MNIST (offline default), 28x28 grey.

The paper's recipe: Adam lr 2e-4, b1 0.5 for both networks, N(0, 0.02) weights, BN in both
(not on D's first layer), LeakyReLU 0.2 in D; here with the non-saturating loss from logits, an
EMA of G's weights for sampling, width 32 and batch 64 to fit ~30 minutes on 2 CPU cores.
Every epoch is scored with classifier_fid on 2,000 EMA samples against the first 2,000 test
images: a Fréchet distance in the features of this project's Fashion-MNIST classifier, NOT
Inception-FID (dl10_jax/train/image_quality.py; the first run trains and caches that classifier,
2-5 minutes; --config.quality_metric=False turns the metric off).
Sample grids go to WORKDIR/samples/ and TensorBoard.

  python -m dl10_jax.main --config configs/gan.py --workdir runs/gan
  python -m dl10_jax.sample --workdir runs/gan --num_samples 10000 --out grid.png --quality
  python -m dl10_jax.main --config configs/gan.py:mnist --workdir runs/gan_mnist   # TFDS / IDX
  python -m dl10_jax.main --config configs/gan.py:cifar10 --workdir runs/gan_cifar  # TFDS, 32x32x3
  python -m dl10_jax.main --config configs/gan.py:wide --workdir runs/gan_wide    # G at 64
  python -m dl10_jax.main --config configs/gan.py:smoke --workdir /tmp/gan_smoke  # seconds

Variants (comma-separated): wide, smoke, mnist, cifar10. `wide` trades FID for class confidence:
G at width 64 (D stays 32), one G pass per step, 32 epochs in ~26 minutes; confidence 0.801 on
the run's 2,000-sample evals (0.796 on 10,000) and FID 4.43, against the default's 0.791 and 3.45.
"""

import ml_collections

from dl10_jax import config_lib

VARIANTS = ('wide', 'smoke', 'mnist', 'cifar10')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  variants = {'wide': _wide, 'mnist': _mnist, 'cifar10': _cifar10,
              'smoke': _smoke}  # Smoke shrinks the rest.
  return config_lib.apply_variants(_recipe(), args, variants)


def _recipe() -> ml_collections.ConfigDict:
  """The 30-minute Fashion-MNIST run."""
  config = config_lib.base_config()
  config.objective = 'gan'
  config.model = ml_collections.ConfigDict({
      'name': 'dcgan',
      'image_size': 28,  # 28 = 7 x 2^2, 32 = 4 x 2^3: the generator's base grid and upsamplings.
      'channels': 1,
      'latent_dim': 100,
      'features': 32,  # G's last hidden / D's first layer; doubled per resolution halving.
      'generator_features': 0,  # G alone wider (or narrower); 0: as `features`.
  })
  config.gan = ml_collections.ConfigDict({
      'b1': 0.5,
      'b2': 0.999,
      'label_smoothing': 0.0,  # One-sided: D's target for real images is 1 - label_smoothing.
      'r1_weight': 0.0,  # gamma of the R1 penalty gamma / 2 * E|grad_x D(x)|^2 on reals.
      'ema_decay': 0.999,  # Of G's weights; samples and eval use the EMA.
      # G's update reuses the batch D just saw (one G pass per step instead of two, as in the
      # PyTorch DCGAN example) rather than drawing fresh noise.
      'reuse_fakes': False,
      'sample_batch_stats': True,  # Sample with the batch's BN statistics (the reference DCGAN).
  })
  # classifier_fid / classifier_confidence / class_histogram_ratio at every eval (28x28 grey
  # images only); '' reads the classifier from $DL10_CACHE_DIR or ~/.cache/dl10_jax.
  config.quality_metric = True
  config.quality_classifier_dir = ''

  config.dataset.name = 'fashion_mnist'
  config.dataset.num_eval_examples = 2000  # Eval samples: as many as eval images.
  config.batch_size = 64
  config.eval_batch_size = 500
  config.microbatch_size = 0  # Whole-batch BN statistics.
  # 42,188 steps at ~36 steps/s: 23.3 min on 2 CPU cores with the evals (experiments/gan).
  config.num_epochs = 45
  config.optimizer = 'adam'
  config.learning_rate = 2e-4
  config.schedule = 'constant'
  config.log_every_steps = 100
  config.eval_every_steps = 938  # One epoch of 60,000 / 64.
  config.checkpoint_every_steps = 1000
  return config


def _wide(config: ml_collections.ConfigDict) -> None:
  """G at 64, D at 32: G's width lifts class confidence per epoch; one G pass per step and the
  transposed conv's matmul form pay for most of it (experiments/gan, 25.5 min)."""
  config.model.generator_features = 64
  config.gan.reuse_fakes = True
  config.num_epochs = 32  # 30,000 steps at ~20 steps/s with the evals.


def _mnist(config: ml_collections.ConfigDict) -> None:
  config.dataset.name = 'mnist'
  config.quality_metric = False  # The classifier knows clothes: on digits its scores mean little.


def _cifar10(config: ml_collections.ConfigDict) -> None:
  config.dataset.name = 'cifar10'
  config.model.update(image_size=32, channels=3, features=64)
  config.quality_metric = False  # The metric is for 28x28 grey images.


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A seconds-long run on a slice of the data, used by the tests."""
  config.model.update(features=8, generator_features=0)
  config.dataset.update(num_train_examples=256, num_eval_examples=128)
  config.update(batch_size=32, eval_batch_size=64, num_epochs=1, eval_every_steps=8,
                log_every_steps=2, checkpoint_every_steps=4, progress_bar=False)
