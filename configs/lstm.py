"""Seed algorithm 3, the LSTM: a character-level language model on the offline Shakespeare corpus.

Validation is the held-out plays (every 10th play: henry-iv-part-1, all-s-well-that-ends-well,
cymbeline; dl10_jax/data/shakespeare.py). Results: experiments/lstm/README.md.

  python -m dl10_jax.main --config configs/lstm.py --workdir runs/lstm
  python -m dl10_jax.sample --workdir runs/lstm --prompt 'ROMEO:' --max_new_tokens 500
  python -m dl10_jax.main --config configs/lstm.py:genre --workdir runs/lstm_genre  # classifier
  python -m dl10_jax.main --config configs/lstm.py:smoke --workdir /tmp/lstm_smoke   # seconds

`genre` trains the LSTM classifier of the RNN's genre task (configs/rnn.py) for the RNN vs LSTM
table; `smoke` combines with it (`:genre,smoke`).
"""

import ml_collections

from configs import rnn
from dl10_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, ('smoke', 'genre'))
  if 'genre' in args:
    config = rnn.get_config(','.join(sorted(args - {'genre'})))
    config.model.cell = 'lstm'
    return config

  config = config_lib.base_config()
  config.objective = 'language_model'
  config.dataset = config_lib.language_model_dataset('shakespeare_char')
  config.dataset.block_size = 128
  config.model = ml_collections.ConfigDict({
      'name': 'recurrent_lm',
      'cell': 'lstm',
      'vocab_size': -1,  # From the tokenizer.
      'embed_dim': 128,
      'hidden_size': 512,
      'num_layers': 1,
      'dropout_rate': 0.0,
      'tie_embeddings': False,
      'lstm_impl': 'xla',  # xla | pallas | auto (dl10_jax/models/recurrent.py)
      'lstm_blocks': (),  # The Pallas LSTM's (batch,) or (batch, time) blocks; () picks them.
  })
  config.batch_size = 32
  config.eval_batch_size = 128
  config.optimizer = 'adam'
  config.learning_rate = 3e-3  # Better than 2e-3 at every eval (experiments/lstm).
  config.schedule = 'cosine'
  config.grad_clip_norm = 1.0
  config.num_train_steps = 6000  # ~27 minutes on 2 CPU cores at ~3.9 steps/s (experiments/lstm).
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000

  if 'smoke' in args:  # Seconds: a small model, a few steps, a slice of the validation split.
    config.model.hidden_size = 64
    config.model.embed_dim = 16
    config.dataset.block_size = 32
    config.dataset.num_eval_examples = 64
    config.batch_size = 16
    config.eval_batch_size = 32
    config.num_train_steps = 20
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
    config.progress_bar = False
  return config
