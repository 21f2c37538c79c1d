"""Seed algorithm 2, the RNN: the seed's design (embedding + 2 recurrent layers + dense) on the
offline Shakespeare genre task: which of 6 genres a passage of 16 dialogue lines is from.

Split by play: one play per genre is held out (dl10_jax/data/shakespeare.py, GENRE_EVAL_PLAYS).
The passage is read as lower-cased word tokens; the classifier reads the masked mean of the last
layer's states over time (reading the final state alone stays near chance: experiments/rnn).

  python -m dl10_jax.main --config configs/rnn.py --workdir runs/rnn
  python -m dl10_jax.main --config configs/rnn.py:lm --workdir runs/rnn_lm   # char-level RNN LM
  python -m dl10_jax.main --config configs/rnn.py:smoke --workdir /tmp/rnn_smoke

`lm` is the LSTM language model of configs/lstm.py with an Elman RNN cell, for the RNN vs LSTM
table; `smoke` combines with it (`:lm,smoke`).
"""

import ml_collections

from dl10_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, ('smoke', 'lm'))
  if 'lm' in args:
    from configs import lstm
    config = lstm.get_config(','.join(sorted(args - {'lm'})))
    config.model.cell = 'rnn'
    return config

  config = config_lib.base_config()
  config.dataset = config_lib.text_classification_dataset('shakespeare_genre')
  config.model = ml_collections.ConfigDict({
      'name': 'recurrent_classifier',
      'cell': 'rnn',
      'num_classes': -1,  # From the data (6 genres).
      'vocab_size': -1,  # From the tokenizer.
      'embed_dim': 128,
      'hidden_size': 128,
      'num_layers': 2,
      'bidirectional': False,
      'pooling': 'mean',
      'dropout_rate': 0.2,
      'lstm_impl': 'xla',  # xla | pallas | auto (dl10_jax/models/recurrent.py)
      'lstm_blocks': (),  # The Pallas LSTM's (batch,) or (batch, time) blocks; () picks them.
  })
  config.batch_size = 64
  config.eval_batch_size = 256
  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.schedule = 'cosine'
  config.grad_clip_norm = 1.0
  config.num_epochs = 10
  config.log_every_steps = 50

  if 'smoke' in args:
    config.dataset.num_train_examples = 256
    config.dataset.num_eval_examples = 128
    config.dataset.max_len = 64
    config.model.hidden_size = 32
    config.model.embed_dim = 16
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_epochs = 2
    config.log_every_steps = 4
    config.checkpoint_every_steps = 8
    config.progress_bar = False
  return config
