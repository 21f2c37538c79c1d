"""GPT: a decoder-only Transformer, character level on the offline Shakespeare
corpus (validation: the held-out plays, the same split as configs/lstm.py). The main job of
`make run`. Results, curves and samples: experiments/gpt/README.md.

  python -m dl10_jax.main --config configs/gpt.py --workdir runs/gpt
  python -m dl10_jax.sample --workdir runs/gpt --prompt 'ROMEO:' --max_new_tokens 500
  python -m dl10_jax.main --config configs/gpt.py:large --workdir runs/gpt_large   # 60 minutes
  python -m dl10_jax.main --config configs/gpt.py:smoke --workdir /tmp/gpt_smoke   # seconds
  python -m dl10_jax.sweep --config configs/gpt.py --workdir runs/gpt_lr_width   # get_sweep below

Variants (comma-separated, e.g. `:bpe,smoke`):
  large      the 60-minute config: 4 layers x 192, 3,600 steps (1.415 in 59 min 20 s).
  mini       6 layers x 384, 6 heads, T 256, batch 16 (10.8 M parameters): the benchmark size.
  bpe        a byte-level BPE tokenizer (vocabulary 1,024) trained on the training split.
  pretrain   all genres except the comedies' validation play (a-midsummer-night-s-dream).
  finetune   the comedies only (validation: a-midsummer-night-s-dream), from a pre-trained run:
             --config.init_from=runs/gpt_pretrain; step 0 logs the loss before fine-tuning.
  hf_text    a local Hugging Face dataset: --config.dataset.path=DIR (dl10_jax/data/hf_text.py).
  gpt2, gpt2-medium, gpt2-large, gpt2-xl
             GPT-2's sizes (124M, 355M, 774M, 1.56B with its 50,257 tokens): learned positions,
             LayerNorm epsilon 1e-5, 1,024 tokens of context.
  smoke      a seconds-long run, for tests.

Any variant starts from a Hugging Face GPT-2 checkpoint with --config.init_from=hf:DIR: the
model's shape and tokenizer are then the checkpoint's (dl10_jax/models/hf_gpt2.py), e.g.
  python -m dl10_jax.main --config configs/gpt.py --workdir runs/gpt2_ft \
      --config.init_from=hf:DIR --config.dataset.name=text_file --config.dataset.path=FILE
"""

import functools

import ml_collections

from dl10_jax import config_lib, config_recipes, sweeps

VARIANTS = ('smoke', 'large', 'mini', 'bpe', 'pretrain', 'finetune', 'hf_text',
            *config_recipes.GPT2_SIZES)
# What `python -m dl10_jax.sweep` compares the points by: validation nats per token (per
# character with the char tokenizer), lower is better.
SWEEP_METRIC = 'eval_loss'
SWEEP_MODE = 'min'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, VARIANTS)
  variants = {'large': _large, 'mini': _mini, 'bpe': _bpe, 'pretrain': _pretrain,
              'finetune': _finetune, 'hf_text': _hf_text,
              **{size: functools.partial(_gpt2, size) for size in config_recipes.GPT2_SIZES},
              'smoke': _smoke}  # In this order: smoke shrinks the rest.
  return config_lib.apply_variants(_recipe(), args, variants)


def _model(block_size: ml_collections.FieldReference) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'name': 'gpt',
      'vocab_size': -1,  # From the tokenizer.
      'block_size': block_size,  # The dataset's reference: overriding either changes both.
      'num_layers': 4,
      'width': 128,
      'num_heads': 4,
      'mlp_ratio': 4,
      # Rotary: 1.655 against learned positions' 1.752 at step 800 (experiments/gpt/README.md).
      'positions': 'rotary',
      'dropout_rate': 0.0,  # Short runs on 4.4 M characters do not overfit.
      'attention_impl': 'auto',  # CPU: blocked causal attention; GPU: cuDNN for bf16.
      'remat': 'none',  # none | full | dots | dots_no_batch: recompute blocks in the backward.
      'layer_norm_epsilon': 1e-6,  # flax's default; GPT-2's is 1e-5 (the gpt2 variants).
  })


def _recipe() -> ml_collections.ConfigDict:
  """The 15-minute `make run` config."""
  config = config_lib.base_config()
  config.objective = 'language_model'
  config.dataset = config_lib.language_model_dataset('shakespeare_char')
  block_size = ml_collections.FieldReference(128)
  config.dataset.block_size = block_size
  config.model = _model(block_size)
  # Small and fast wins a 15-minute budget on 2 CPU cores (experiments/gpt/README.md: at equal
  # wall time 4 x 128 beat 4 x 192, 4 x 256 and 6 x 128).
  config.batch_size = 32
  config.eval_batch_size = 64
  config.optimizer = 'adamw'  # Weight decay on matrices and embeddings, not biases or LN scales.
  config.learning_rate = 3e-3
  config.weight_decay = 0.1
  config.adam_b2 = 0.99  # nanoGPT's choice for its small character-level runs.
  config.schedule = 'warmup_cosine'
  config.warmup_steps = 100
  config.grad_clip_norm = 1.0
  # Steps that fit `make run` in 15 minutes on 2 CPU cores, setup included, at ~0.2-0.3 s a step
  # (experiments/gpt/README.md).
  config.num_train_steps = 3000
  config.log_every_steps = 100
  config.eval_every_steps = 750
  config.checkpoint_every_steps = 750
  return config


def _large(config: ml_collections.ConfigDict) -> None:
  """60 minutes: wider, 2.5 x the steps."""
  config.model.update(width=192, num_heads=4)
  config.learning_rate = 2e-3
  config.warmup_steps = 200
  # 3,600 steps and 4 evals: 20.7 min on 2 CPU cores with jax 0.12 (0.32 s/step), 59 min with
  # jax 0.10.2 (experiments/gpt). A longer schedule that fills the 60 minutes is not measured.
  config.num_train_steps = 3600
  config.eval_every_steps = 900
  config.checkpoint_every_steps = 900


def _mini(config: ml_collections.ConfigDict) -> None:
  """The benchmark size (scripts/benchmark.py): 10.8 M parameters."""
  config.model.update(config_recipes.GPT_SIZES['mini'])
  config.dataset.block_size = 256  # The model's too: one reference.
  config.batch_size = 16
  config.learning_rate = 1e-3


def _gpt2(size: str, config: ml_collections.ConfigDict) -> None:
  """GPT-2 of one of its four sizes; the block size is the dataset's too (one reference)."""
  config.model.update(config_recipes.GPT_SIZES[size], **config_recipes.GPT2_MODEL)


def _hf_text(config: ml_collections.ConfigDict) -> None:
  """Adds hf_text's fields, keeping the others (tokenizer, block size) as the variants set them."""
  for key, value in config_lib.hf_text_dataset().items():
    if key not in config.dataset:
      config.dataset[key] = value
  config.dataset.name = 'hf_text'


def _bpe(config: ml_collections.ConfigDict) -> None:
  config.dataset.tokenizer = 'bpe'
  config.dataset.vocab_size = 1024


def _pretrain(config: ml_collections.ConfigDict) -> None:
  config.dataset.exclude_plays = 'a-midsummer-night-s-dream'


def _finetune(config: ml_collections.ConfigDict) -> None:
  config.dataset.genres = 'comedies'
  config.learning_rate /= 10
  config.warmup_steps = 50
  config.num_train_steps = 1000
  config.eval_every_steps = 250


def _smoke(config: ml_collections.ConfigDict) -> None:
  config.model.update(num_layers=2, width=32, num_heads=2)
  config.dataset.update(block_size=32, num_eval_examples=64)
  config.update(batch_size=16, eval_batch_size=32, warmup_steps=5, num_train_steps=20,
                log_every_steps=5, eval_every_steps=10, checkpoint_every_steps=10,
                progress_bar=False)


def get_sweep() -> list[dict]:
  """Learning rate x width (4 heads at both widths): 6 points of 800 steps, half the recipe, with
  an eval every 400. Estimated from the step times above (0.45 s at width 128, 0.8 s at 192), not
  yet run: about an hour on 2 CPU cores."""
  return sweeps.product(learning_rate=[1e-3, 3e-3, 6e-3], **{'model.width': [128, 192]},
                        num_train_steps=[800], eval_every_steps=[400])
