"""Sequential Fashion-MNIST: each 28x28 image read as a sequence of 28 rows (28 features per step),
the standard benchmark for recurrent classifiers, on the offline Fashion-MNIST (MNIST by name).

  python -m dl10_jax.main --config configs/seq_fmnist.py --workdir runs/seq_fmnist_lstm
  python -m dl10_jax.main --config configs/seq_fmnist.py:rnn --workdir runs/seq_fmnist_rnn
  python -m dl10_jax.main --config configs/seq_fmnist.py:lstm,pixels --workdir runs/pixels
  python -m dl10_jax.main --config configs/seq_fmnist.py:smoke --workdir /tmp/seq_smoke

Variants (comma-separated): lstm (default) | rnn; pixels reads pixel by pixel (784 steps, a
long-range test); smoke. Results: experiments/lstm/README.md and experiments/rnn/README.md.
"""

import ml_collections

from dl10_jax import config_lib

VARIANTS = ('lstm', 'rnn', 'pixels', 'smoke')

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  if {'lstm', 'rnn'} <= args:
    raise ValueError('choose one cell: lstm or rnn')
  config = config_lib.base_config()
  config.dataset.name = 'fashion_mnist'
  config.model = ml_collections.ConfigDict({
      'name': 'recurrent_classifier',
      'cell': 'rnn' if 'rnn' in args else 'lstm',
      'num_classes': 10,
      'hidden_size': 256,
      'num_layers': 1,
      'pooling': 'last',
      'image_steps': 'pixels' if 'pixels' in args else 'rows',
      'lstm_impl': 'xla',  # xla | pallas | auto (dl10_jax/models/recurrent.py)
      'lstm_blocks': (),  # The Pallas LSTM's (batch,) or (batch, time) blocks; () picks them.
  })
  config.batch_size = 128
  config.optimizer = 'adam'
  config.learning_rate = 2e-3
  config.schedule = 'cosine'
  config.grad_clip_norm = 1.0
  config.num_epochs = 10
  if 'rnn' in args:  # Cheap steps: 20 epochs in 5 minutes reach 88.4 % (10 epochs: 87.2 %).
    config.num_epochs = 20
  config.log_every_steps = 100

  if 'smoke' in args:
    config.dataset.num_train_examples = 1024
    config.dataset.num_eval_examples = 256
    config.model.hidden_size = 64
    config.batch_size = 32
    config.eval_batch_size = 128
    config.num_epochs = 2
    config.log_every_steps = 8
    config.checkpoint_every_steps = 16
    config.progress_bar = False
  return config
