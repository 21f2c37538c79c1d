"""The LSTM: a character-level language model on the offline Shakespeare corpus.

Validation is the held-out plays (every 10th play: henry-iv-part-1, all-s-well-that-ends-well,
cymbeline; dl10_jax/data/shakespeare.py). Results: experiments/lstm/README.md.

  python -m dl10_jax.main --config configs/lstm.py --workdir runs/lstm
  python -m dl10_jax.sample --workdir runs/lstm --prompt 'ROMEO:' --max_new_tokens 500
  python -m dl10_jax.main --config configs/lstm.py:genre --workdir runs/lstm_genre  # classifier
  python -m dl10_jax.main --config configs/lstm.py:smoke --workdir /tmp/lstm_smoke   # seconds

`genre` trains the LSTM classifier of the RNN's genre task (configs/rnn.py) for the RNN vs LSTM
table; `smoke` combines with it (`:genre,smoke`). The two recipes, each run with either cell, are
in dl10_jax/config_recipes.py.
"""

import ml_collections

from dl10_jax import config_lib, config_recipes

VARIANTS = ('smoke', 'genre')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  recipe = config_recipes.genre_classifier if 'genre' in args else config_recipes.recurrent_lm
  return recipe('lstm', smoke='smoke' in args)
