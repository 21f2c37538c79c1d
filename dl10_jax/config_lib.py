"""The fields every experiment config shares, and their validation.

Experiment configs (`configs/*.py`) start from `base_config()` and fill in `model`, `dataset` and the
recipe. `finalize()` checks the result once, before any work starts, so that a bad value fails with
one line naming it instead of a traceback deep inside JAX.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Callable

import ml_collections

from dl10_jax import precision, runtime
from dl10_jax.errors import ConfigError, check_choice

OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')
DTYPES = precision.DTYPES
WANDB_MODES = ('online', 'offline', 'disabled')
WANDB_INSTALL = 'pip install wandb==0.31.0'  # The version the tests use.


def base_config() -> ml_collections.ConfigDict:
  """Common fields; an experiment config overrides what its recipe needs."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.objective = 'classification'  # Which part of dl10_jax.train supplies loss, metrics and eval.

  c.batch_size = 64  # Global batch, split over every device of the mesh's `data` axis.
  c.eval_batch_size = 1024  # A multiple of common device counts and of the CNN's CPU chunk.
  c.num_epochs = 1.0  # Used when num_train_steps is -1.
  c.num_train_steps = -1

  c.optimizer = 'adam'
  c.learning_rate = 1e-3
  c.schedule = 'constant'
  c.warmup_steps = 0
  c.weight_decay = 0.0  # adamw (decoupled) and sgd (L2), on matrices and kernels only.
  c.momentum = 0.9  # sgd only.
  # adam and adamw: the decay of the squared-gradient average (nanoGPT uses 0.99 for its small
  # character-level runs, whose few tokens per step make 0.999's average lag).
  c.adam_b2 = 0.999
  c.nesterov = False  # sgd only.
  c.label_smoothing = 0.0  # classification only.
  c.grad_clip_norm = 0.0  # 0 disables clipping.
  # Gradual magnitude pruning (train/pruning.py): each kernel (ndim >= 2) reaches `sparsity` zeros
  # on a cubic schedule from begin_step to end_step (-1: 80 % of num_train_steps), masks updated
  # every `every_steps`. 0 disables it.
  c.pruning = ml_collections.ConfigDict({'sparsity': 0.0, 'begin_step': 0, 'end_step': -1,
                                         'every_steps': 100})
  # Examples per sequential micro-batch of a train or eval step (gradient accumulation: the mean
  # gradient is the batch's for models without batch statistics). 0: the whole batch at once;
  # -1: auto, 16 on CPU (chunks whose activations stay in cache), whole batches on accelerators.
  c.microbatch_size = 0
  # With micro-batches, a model with BatchNorm normalises each micro-batch by its own statistics
  # ("ghost" batch norm, Hoffer et al. 2017), not by the batch's. That changes the model, so it
  # must be chosen: True allows it; False makes such a config an error.
  c.ghost_batch_norm = False

  # Compute dtype; parameters, optimizer state and loss stay float32. 'auto': float32 on CPU,
  # bfloat16 on GPU/TPU for the families listed in dl10_jax/precision.py. 'float16' scales the
  # loss dynamically (train/loss_scale.py).
  c.dtype = 'auto'

  # Fine-tuning / transfer: start from another run's parameters (a workdir, its checkpoints dir or
  # one step's dir), with this run's own optimizer, schedule and step. Parameters whose path
  # ('block0/attn/qkv/kernel') matches the regex `init_reinit` keep their fresh initialisation.
  c.init_from = ''
  c.init_reinit = ''

  # Compiled programs persist here, so a resume, a sweep point or a sample compiles nothing the
  # first run did ('': $DL10_COMPILATION_CACHE or ~/.cache/dl10_jax/xla; 'off' disables it).
  c.compilation_cache_dir = ''
  # JAX devices to split the CPU into (runtime.use_cpu_devices): with 2, a 2-core machine runs two
  # halves of each batch at once, which fills the core XLA:CPU leaves idle in small sequential
  # operations (recurrent models, ResNet-20, the U-Net). 0: JAX's default, one. Unused on GPU/TPU.
  c.cpu_devices = 0

  c.log_every_steps = 100
  c.eval_every_steps = -1  # -1: once per epoch.
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.progress_bar = True
  # 'START,COUNT': a jax.profiler trace of steps START .. START+COUNT-1 in WORKDIR/profile (open
  # it in TensorBoard's profile tab); '' traces nothing. A run resumed past START traces nothing.
  c.profile_steps = ''

  # Mesh axis sizes (train/sharding.py); -1 takes all remaining devices. Batches split over
  # data x fsdp; fsdp also splits the large arrays of the train state; tensor splits attention
  # heads and MLP hidden units (GPT, Transformer). E.g. --config.mesh.fsdp=4.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})

  # Weights & Biases (optional: pip install wandb==0.31.0), beside metrics.jsonl and TensorBoard;
  # off while project is ''. mode '' leaves it to $WANDB_MODE (default online); tags are
  # comma-separated. The API key comes from $WANDB_API_KEY or `wandb login`, never from a config.
  c.wandb = ml_collections.ConfigDict({'project': '', 'entity': '', 'name': '', 'mode': '',
                                       'tags': ''})

  c.model = ml_collections.ConfigDict({'name': ''})
  c.dataset = ml_collections.ConfigDict({
      'name': '',
      'source': 'auto',  # auto | idx | tfds
      'data_dir': '',  # Directory with IDX files; also the DL10_DATA_DIR env var.
      'num_train_examples': -1,  # > 0 keeps only the first N training examples (smoke runs).
      'num_eval_examples': -1,
      'prefetch': 2,  # Batches the grain reader thread keeps ready.
  })
  return c


def parse_arg(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
  """The comma-separated words of a config argument (`configs/x.py:a,b`), each one of `allowed`."""
  words = {w.strip() for w in (arg or '').split(',') if w.strip()}
  for word in sorted(words):
    if word not in allowed:
      raise ValueError(f'unknown config argument {word!r}; allowed: {", ".join(allowed)} '
                       '(comma-separated)')
  return words


def apply_variants(config: ml_collections.ConfigDict, words: set[str],
                   variants: dict[str, Callable[[ml_collections.ConfigDict], None]]
                   ) -> ml_collections.ConfigDict:
  """Runs the modifier of each chosen word on `config`, in the order of `variants`, so that a
  config lists its variants as data and the order they compose in (smoke last) is written once."""
  for word, modify in variants.items():
    if word in words:
      modify(config)
  return config


def unknown_field(config: ml_collections.ConfigDict, key: str) -> tuple[str, str] | None:
  """For a dotted `key` that is no field of `config`: its first unknown part ('model.depth') and
  the fields there are ('fields of config.model: ...'), for one-line override errors."""
  node, path = config, key.split('.')
  for depth, part in enumerate(path):
    if not hasattr(node, 'keys') or part not in node:
      where = '.'.join(['config'] + path[:depth])
      allowed = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else '(not a sub-config)'
      return '.'.join(path[:depth + 1]), f'fields of {where}: {allowed}'
    node = node[part]
  return None


def language_model_dataset(name: str = 'shakespeare_char') -> ml_collections.ConfigDict:
  """Dataset fields of the text language-modelling datasets (dl10_jax/data/text.py)."""
  return ml_collections.ConfigDict({
      'name': name,
      'tokenizer': 'char',  # char | byte | bpe (gpt2: set by init_from=hf:DIR)
      'vocab_size': 0,  # bpe only: the size of the vocabulary trained on the training split.
      'block_size': 128,  # Tokens of context; a training example is block_size + 1 tokens.
      # shakespeare_char: comma-separated genres to keep (empty: all 38 plays; with genres, each
      # genre's held-out play is validation), and plays to leave out of training.
      'genres': '',
      'exclude_plays': '',
      'path': '',  # text_file: a UTF-8 file.
      'data_dir': '',  # TFDS datasets.
      'cache_dir': '',  # Prepared token arrays ('': $DL10_CACHE_DIR or ~/.cache/dl10_jax).
      'num_train_examples': -1,
      'num_eval_examples': -1,
      'prefetch': 2,
  })


def hf_text_dataset() -> ml_collections.ConfigDict:
  """Language-model fields plus those of `hf_text`, a local Hugging Face dataset
  (dl10_jax/data/hf_text.py); its own helper, so that other datasets' configs keep their fields."""
  config = language_model_dataset('hf_text')
  config.update({
      # A save_to_disk directory, a dataset directory (splits from file names), or parquet / arrow
      # / jsonl files (a glob; one split, 'train').
      'path': '',
      'train_split': 'train',
      'eval_split': 'validation',  # '': hold out the last eval_holdout of the training documents.
      'eval_holdout': 0.05,  # < 1: a fraction of the documents; >= 1: a number of documents.
      'text_field': 'text',
      'separator': '\n\n',  # Between documents; escapes such as \n are decoded.
      'max_documents': -1,  # > 0: only the first N documents of each split (quick runs).
      'max_chars': -1,  # > 0: only the first N characters of each split.
  })
  return config


def text_classification_dataset(name: str = 'shakespeare_genre') -> ml_collections.ConfigDict:
  """Dataset fields of the passage classification datasets (dl10_jax/data/text.py)."""
  return ml_collections.ConfigDict({
      'name': name,
      'tokenizer': 'word',
      'vocab_size': 8192,
      'max_len': 256,  # Tokens per passage (padded with 0 / truncated).
      'passage_lines': 16,  # shakespeare_genre: dialogue lines per passage.
      'passage_stride': 16,  # Training passages start every this many lines (eval: no overlap).
      'data_dir': '',
      'cache_dir': '',
      'num_train_examples': -1,
      'num_eval_examples': -1,
      'prefetch': 2,
  })


def profile_window(value: str) -> tuple[int, int] | None:
  """(start, count) of a `profile_steps` value, None for ''; one line for anything else."""
  parts = [p.strip() for p in value.split(',')] if value.strip() else []
  if not parts:
    return None
  if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) < 1 or \
      int(parts[1]) < 1:
    raise ConfigError(f"profile_steps={value!r} must be 'START,COUNT' with START >= 1 and "
                      "COUNT >= 1 (traces steps START .. START+COUNT-1), or '' for none")
  return int(parts[0]), int(parts[1])


def _positive(name: str, value: float) -> None:
  if not value > 0:
    raise ConfigError(f'{name}={value!r} must be > 0')


def finalize(config: ml_collections.ConfigDict, num_train_examples: int,
             num_data_devices: int, backend: str = 'cpu') -> ml_collections.ConfigDict:
  """Validates `config` and resolves derived fields (-1 values) in a copy."""
  c = ml_collections.ConfigDict(config.to_dict())
  if c.microbatch_size == -1:
    c.microbatch_size = 16 if backend == 'cpu' and c.batch_size > 16 else 0
  if c.microbatch_size < 0 or (c.microbatch_size and c.batch_size % c.microbatch_size):
    raise ConfigError(f'microbatch_size={c.microbatch_size} must divide batch_size={c.batch_size} '
                      '(or be 0 for none, -1 for auto)')
  check_choice('optimizer', c.optimizer, OPTIMIZERS)
  check_choice('schedule', c.schedule, SCHEDULES)
  check_choice('dtype', c.dtype, DTYPES)
  c.dtype, why = precision.resolve_dtype(c.dtype, c.model.name, backend)
  if config.dtype == 'auto':
    runtime.log_once(f'dtype=auto: computing in {c.dtype} ({why})')
  _positive('batch_size', c.batch_size)
  _positive('eval_batch_size', c.eval_batch_size)
  _positive('learning_rate', c.learning_rate)
  if not math.isfinite(c.learning_rate):
    raise ConfigError(f'learning_rate={c.learning_rate!r} must be finite')
  if not 0 <= c.seed < 2**32:
    raise ConfigError(f'seed={c.seed!r} must be in [0, 2**32)')
  if c.grad_clip_norm < 0:
    raise ConfigError(f'grad_clip_norm={c.grad_clip_norm!r} must be >= 0 (0 disables clipping)')
  if c.warmup_steps and c.schedule != 'warmup_cosine':
    raise ConfigError(f'warmup_steps={c.warmup_steps} needs schedule=warmup_cosine, not '
                      f'{c.schedule!r}')
  if not 0 < c.adam_b2 < 1:
    raise ConfigError(f'adam_b2={c.adam_b2!r} must be in (0, 1)')
  if not 0 <= c.get('label_smoothing', 0.0) < 1:
    raise ConfigError(f'label_smoothing={c.label_smoothing!r} must be in [0, 1)')
  _positive('log_every_steps', c.log_every_steps)
  _positive('checkpoint_every_steps', c.checkpoint_every_steps)
  _positive('keep_checkpoints', c.keep_checkpoints)
  for field in ('batch_size', 'eval_batch_size'):
    if c[field] % num_data_devices:
      raise ConfigError(f'{field}={c[field]} is not divisible by the {num_data_devices} devices of '
                        f'the mesh batch axes (data x fsdp); use a multiple of {num_data_devices}')
  steps_per_epoch = max(1, math.ceil(num_train_examples / c.batch_size))
  if c.num_train_steps == -1:
    _positive('num_epochs', c.num_epochs)
    c.num_train_steps = max(1, math.ceil(c.num_epochs * num_train_examples / c.batch_size))
  _positive('num_train_steps', c.num_train_steps)
  if c.eval_every_steps == -1:
    c.eval_every_steps = steps_per_epoch
  _positive('eval_every_steps', c.eval_every_steps)
  if c.warmup_steps < 0 or (c.schedule == 'warmup_cosine' and c.warmup_steps >= c.num_train_steps):
    raise ConfigError(f'warmup_steps={c.warmup_steps} must be in [0, num_train_steps='
                      f'{c.num_train_steps})')
  window = profile_window(c.get('profile_steps', ''))
  if window and sum(window) - 1 > c.num_train_steps:
    raise ConfigError(f'profile_steps={c.profile_steps!r} traces up to step {sum(window) - 1}, '
                      f'past num_train_steps={c.num_train_steps}')
  _finalize_pruning(c)
  _finalize_wandb(c)
  return c


def _finalize_pruning(c: ml_collections.ConfigDict) -> None:
  """Resolves pruning.end_step and checks the schedule fits the run (configs saved before pruning
  existed get its defaults, so their runs still restore)."""
  if 'pruning' not in c:
    c.pruning = base_config().pruning
  p = c.pruning
  if not 0 <= p.sparsity < 1:
    raise ConfigError(f'pruning.sparsity={p.sparsity!r} must be in [0, 1) (0 disables pruning)')
  if p.end_step == -1:
    p.end_step = max(1, int(0.8 * c.num_train_steps))
  if not p.sparsity:
    return
  if p.begin_step < 0:
    raise ConfigError(f'pruning.begin_step={p.begin_step} must be >= 0')
  if not p.begin_step < p.end_step <= c.num_train_steps:
    raise ConfigError(f'pruning.end_step={p.end_step} must be in (pruning.begin_step='
                      f'{p.begin_step}, num_train_steps={c.num_train_steps}] (-1: 80 % of them)')
  _positive('pruning.every_steps', p.every_steps)


def _finalize_wandb(c: ml_collections.ConfigDict) -> None:
  """Checks the wandb fields (configs saved before they existed get the defaults: off)."""
  if 'wandb' not in c:
    c.wandb = base_config().wandb
  if c.wandb.mode not in ('', *WANDB_MODES):
    raise ConfigError(f'wandb.mode={c.wandb.mode!r} is not supported; allowed: '
                      f'{", ".join(WANDB_MODES)}, or \'\' for $WANDB_MODE')
  # Checked here, before any work, not when the first metric is written (found, not imported).
  if c.wandb.project and c.wandb.mode != 'disabled' and importlib.util.find_spec('wandb') is None:
    raise ConfigError(f'wandb.project={c.wandb.project!r} needs wandb, which is not installed: '
                      f'{WANDB_INSTALL} (or leave wandb.project empty)')
