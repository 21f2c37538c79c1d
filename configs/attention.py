"""Soft vs hard attention on translated Fashion-MNIST: each image at a random
place of a 60x60 canvas (the same for a record every run); a small CNN makes a 15x15 grid of
features, attention pools it into one vector, a classifier reads it (models/attention_classifier).

  python -m dl10_jax.main --config configs/attention.py --workdir runs/attention_soft
  python -m dl10_jax.main --config configs/attention.py:reinforce --workdir runs/attention_reinforce
  python -m dl10_jax.main --config configs/attention.py:smoke --workdir /tmp/attention_smoke

Variants (comma-separated): one kind of attention, soft (default; additive scores, softmax over
every location) | reinforce (sampled, REINFORCE with a learned baseline and an entropy bonus) |
gumbel (straight-through Gumbel-softmax, temperature annealed) | topk (deterministic, straight-
through; --config.model.topk_estimator=perturbed); clutter (8 crops of other images on the
canvas); smoke (seconds). Hard kinds select model.k <= 4 locations.
"""

import ml_collections

from dl10_jax import config_lib

KINDS = ('soft', 'reinforce', 'gumbel', 'topk')
VARIANTS = KINDS + ('clutter', 'smoke')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  kinds = sorted(args & set(KINDS))
  if len(kinds) > 1:
    raise ValueError(f'choose one kind of attention: {", ".join(KINDS)}')
  config = config_lib.base_config()
  config.dataset.update(name='translated_fashion_mnist', canvas=60, seed=0,
                        clutter=8 if 'clutter' in args else 0, clutter_size=8)
  config.model = ml_collections.ConfigDict({
      'name': 'attention_classifier',
      'num_classes': 10,
      'attention': kinds[0] if kinds else 'soft',
      'score': 'additive',
      'k': 4,  # Locations a hard attention selects (soft weights all of them).
      'conv_features': (32, 64, 64),
      'width': 64,
      'hidden': 128,
      'entropy_coef': 0.01,  # reinforce
      'temperature': 1.0,  # gumbel: annealed to temperature_end over anneal_steps
      'temperature_end': 0.1,
      'anneal_steps': 2800,  # About the 3 epochs.
      'topk_estimator': 'straight_through',  # topk: or perturbed
      'perturb_sigma': 0.5,
      'num_perturbations': 8,
  })
  config.batch_size = 64
  config.eval_batch_size = 512
  config.num_epochs = 5  # Inside a 30-minute budget on 2 CPU cores (experiments/attention).
  config.cpu_devices = 2  # Half the batch on each of 2 CPU devices: ~1.3x on 2 cores.
  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.schedule = 'cosine'
  config.log_every_steps = 100
  config.eval_every_steps = 300  # Often enough to read the steps to 80 %.
  if 'smoke' in args:
    _smoke(config)
  return config


def _smoke(config: ml_collections.ConfigDict) -> None:
  config.dataset.update(num_train_examples=256, num_eval_examples=128)
  config.model.update(conv_features=(8, 16, 16), width=16, hidden=32, anneal_steps=8)
  config.update(batch_size=32, eval_batch_size=64, num_epochs=1, log_every_steps=4,
                eval_every_steps=-1, checkpoint_every_steps=8, progress_bar=False)

