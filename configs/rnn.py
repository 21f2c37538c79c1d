"""The Elman RNN: the plain design (embedding + 2 recurrent layers + dense) on the
offline Shakespeare genre task: which of 6 genres a passage of 16 dialogue lines is from.

Split by play: one play per genre is held out (dl10_jax/data/shakespeare.py, GENRE_EVAL_PLAYS).
The passage is read as lower-cased word tokens; the classifier reads the masked mean of the last
layer's states over time (reading the final state alone stays near chance: experiments/rnn).

  python -m dl10_jax.main --config configs/rnn.py --workdir runs/rnn
  python -m dl10_jax.main --config configs/rnn.py:lm --workdir runs/rnn_lm   # char-level RNN LM
  python -m dl10_jax.main --config configs/rnn.py:smoke --workdir /tmp/rnn_smoke

`lm` is the LSTM language model of configs/lstm.py with an Elman RNN cell, for the RNN vs LSTM
table; `smoke` combines with it (`:lm,smoke`). Both recipes are shared with configs/lstm.py and
live in dl10_jax/config_recipes.py.
"""

import ml_collections

from dl10_jax import config_lib, config_recipes

VARIANTS = ('smoke', 'lm')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  recipe = config_recipes.recurrent_lm if 'lm' in args else config_recipes.genre_classifier
  return recipe('rnn', smoke='smoke' in args)
