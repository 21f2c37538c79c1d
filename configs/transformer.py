"""The Transformer encoder as a classifier, on the tasks of the RNN and LSTM so
that the three stand in one table: the offline Shakespeare genre task (default; configs/rnn.py)
and, with `seq_fmnist`, Fashion-MNIST read as 28 rows of 28 features (configs/seq_fmnist.py).

  python -m dl10_jax.main --config configs/transformer.py --workdir runs/transformer_genre
  python -m dl10_jax.main --config configs/transformer.py:seq_fmnist --workdir runs/transformer_sfm
  python -m dl10_jax.main --config configs/transformer.py:smoke --workdir /tmp/transformer_smoke

Variants (comma-separated): seq_fmnist; smoke (seconds). Fields worth sweeping: model.positions
(sinusoidal | learned | rotary), model.pooling (cls | mean), model.score (dot | additive). The
encoder-decoder is configs/seq2seq.py.
"""

import ml_collections

from dl10_jax import config_lib

VARIANTS = ('smoke', 'seq_fmnist')

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  config = _recipe()
  if 'seq_fmnist' in args:
    _seq_fmnist(config)
  else:
    _genre(config)
  if 'smoke' in args:
    _smoke(config)
  return config


def _recipe() -> ml_collections.ConfigDict:
  """The model and optimizer; the task sets the data."""
  config = config_lib.base_config()
  config.model = ml_collections.ConfigDict({
      'name': 'transformer_classifier',
      'num_classes': -1,  # From the data.
      'vocab_size': -1,  # From the tokenizer (token inputs).
      'num_layers': 2,
      'width': 128,
      'num_heads': 4,
      'mlp_ratio': 4,
      'max_len': 512,
      'positions': 'sinusoidal',
      'pooling': 'cls',
      'dropout_rate': 0.1,
      'score': 'dot',
      'attention_impl': 'auto',
      'remat': 'none',  # none | full | dots | dots_no_batch: recompute blocks in the backward.
  })
  config.optimizer = 'adamw'
  config.weight_decay = 0.01
  config.learning_rate = 1e-3
  config.schedule = 'warmup_cosine'
  config.warmup_steps = 100
  config.grad_clip_norm = 1.0
  config.cpu_devices = 2  # Half the batch on each of 2 CPU devices: ~1.14x on 2 cores.
  config.log_every_steps = 50
  return config


def _seq_fmnist(config: ml_collections.ConfigDict) -> None:
  """The recurrent classifiers' task and recipe (configs/seq_fmnist.py)."""
  config.dataset.name = 'fashion_mnist'
  config.model.num_classes = 10
  config.model.vocab_size = 0
  config.update(batch_size=128, num_epochs=10, log_every_steps=100)


def _genre(config: ml_collections.ConfigDict) -> None:
  """The RNN's genre task (configs/rnn.py): word tokens, 0 pads."""
  config.dataset = config_lib.text_classification_dataset('shakespeare_genre')
  config.update(batch_size=64, eval_batch_size=256, num_epochs=10)


def _smoke(config: ml_collections.ConfigDict) -> None:
  config.model.update(num_layers=1, width=32, num_heads=2)
  config.dataset.update(num_train_examples=256, num_eval_examples=128)
  if 'max_len' in config.dataset:  # Token passages (the genre task).
    config.dataset.max_len = 64
  config.update(batch_size=32, eval_batch_size=64, num_epochs=2, warmup_steps=2,
                log_every_steps=4, checkpoint_every_steps=8, progress_bar=False)
