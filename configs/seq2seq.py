"""The Transformer encoder-decoder on algorithmic translation generated on the fly (reverse, sort,
multi-digit addition), with length generalisation: eval also at 1.5x and 2x the longest training
length (`eval_exact_match_len24`, `..._len32` beside `eval_exact_match` and `eval_loss`).

  python -m dl10_jax.main --config configs/seq2seq.py --workdir runs/seq2seq_reverse
  python -m dl10_jax.main --config configs/seq2seq.py:add,rotary --workdir runs/seq2seq_add_rope
  python -m dl10_jax.main --config configs/seq2seq.py:smoke --workdir /tmp/seq2seq_smoke

Variants (comma-separated): one task, reverse (default) | sort | add; one position encoding,
sinusoidal (default) | learned | rotary (the length-generalisation comparison); smoke (seconds).
Decoding is greedy; --config.beam_size=4 (with --config.length_penalty) uses beam search.
"""

import ml_collections

from dl10_jax import config_lib

TASKS = ('reverse', 'sort', 'add')
POSITIONS = ('sinusoidal', 'learned', 'rotary')
VARIANTS = TASKS + POSITIONS + ('smoke',)
# PAD, BOS, EOS, PLUS and the 10 digits: dl10_jax/data/algorithmic.py's VOCAB_SIZE (a test checks
# they agree; the config does not import the data code).
VOCAB_SIZE = 14


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  tasks, positions = sorted(args & set(TASKS)), sorted(args & set(POSITIONS))
  if len(tasks) > 1 or len(positions) > 1:
    raise ValueError(f'choose one task ({", ".join(TASKS)}) and one position encoding '
                     f'({", ".join(POSITIONS)})')
  config = _recipe(tasks[0] if tasks else 'reverse', positions[0] if positions else 'sinusoidal')
  if 'smoke' in args:
    _smoke(config)
  return config


def _dataset(task: str) -> ml_collections.ConfigDict:
  max_len = 8 if task == 'add' else 16  # Digits per operand (add) or per sequence.
  return ml_collections.ConfigDict({
      'name': 'algorithmic',
      'task': task,
      'min_len': 1,
      'max_len': max_len,  # The longest training length.
      # add: numbers written least-significant digit first (the order of carrying; 3,000 steps
      # reach 25.6 % exact match with 'msd', see experiments/transformer).
      'digit_order': 'lsd' if task == 'add' else 'msd',
      'eval_lengths': (max_len * 3 // 2, max_len * 2),  # Extra eval groups, each exactly this long.
      'seed': 0,  # Of the generated records (the shuffle uses config.seed).
      'train_size': 200_000,  # Records per epoch.
      'eval_size': 512,  # Records per eval group.
      'num_train_examples': -1,
      'num_eval_examples': -1,
      'prefetch': 2,
  })


def _model(positions: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'name': 'encoder_decoder',
      'vocab_size': VOCAB_SIZE,
      'num_layers': 2,
      'width': 128,
      'num_heads': 4,
      'mlp_ratio': 4,
      'max_len': 64,  # Learned positions: covers the longest eval sequences (2x).
      'positions': positions,
      'dropout_rate': 0.0,
      'score': 'dot',
      'attention_impl': 'auto',
      'remat': 'none',  # none | full | dots | dots_no_batch: recompute blocks in the backward.
  })


def _recipe(task: str, positions: str) -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.objective = 'seq2seq'
  config.dataset = _dataset(task)
  config.model = _model(positions)
  config.beam_size = 1  # 1: greedy decoding in eval.
  config.length_penalty = 0.6  # Beam search: GNMT's alpha.
  config.batch_size = 64
  config.eval_batch_size = 256
  config.optimizer = 'adamw'
  config.weight_decay = 0.01
  config.learning_rate = 1e-3
  config.schedule = 'warmup_cosine'
  config.warmup_steps = 200
  config.grad_clip_norm = 1.0
  config.num_train_steps = 3000  # ~7 min on 2 CPU cores; reverse is at 96 % exact match by 1,000.
  config.log_every_steps = 100
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 1000
  return config


def _smoke(config: ml_collections.ConfigDict) -> None:
  config.model.update(num_layers=1, width=32, num_heads=2)
  config.dataset.update(max_len=6, eval_lengths=(9, 12), eval_size=32)
  config.update(batch_size=32, eval_batch_size=32, warmup_steps=2, num_train_steps=16,
                log_every_steps=4, eval_every_steps=8, checkpoint_every_steps=8,
                progress_bar=False)
