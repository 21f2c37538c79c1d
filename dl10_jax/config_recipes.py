"""Recipes that more than one experiment config starts from, so that no config imports another.

Pure data on top of `config_lib.base_config()`: like config_lib, this module imports no JAX, so that
loading any config (main.py, sweeps, tests) stays cheap. Each recipe returns a fresh ConfigDict.
"""

from __future__ import annotations

import ml_collections

from dl10_jax import config_lib

# Named GPT sizes: (num_layers, width, num_heads). The 'gpt2*' ones are GPT-2's four (Radford et
# al. 2019; Hugging Face's names), with vocabulary 50,257 and 1,024 positions: 124,439,808,
# 354,823,168, 774,030,080 and 1,557,611,200 parameters (tests/test_hf_gpt2.py).
GPT_SIZES = {
    'baby': dict(num_layers=4, width=128, num_heads=4),  # ~0.8 M parameters at char level.
    'mini': dict(num_layers=6, width=384, num_heads=6),  # 10.8 M.
    'gpt2': dict(num_layers=12, width=768, num_heads=12),
    'gpt2-medium': dict(num_layers=24, width=1024, num_heads=16),
    'gpt2-large': dict(num_layers=36, width=1280, num_heads=20),
    'gpt2-xl': dict(num_layers=48, width=1600, num_heads=25),
}
GPT2_SIZES = tuple(name for name in GPT_SIZES if name.startswith('gpt2'))
# What GPT-2 has besides its size (models/gpt.py's defaults differ): learned positions, LayerNorm
# epsilon 1e-5, a context of 1,024 tokens.
GPT2_MODEL = dict(positions='learned', layer_norm_epsilon=1e-5, block_size=1024)


def _recurrent_model(**fields: object) -> ml_collections.ConfigDict:
  """A recurrent model's fields, ending with the LSTM implementation switches every cell has."""
  return ml_collections.ConfigDict({
      **fields,
      'lstm_impl': 'xla',  # xla | pallas | auto (dl10_jax/models/recurrent.py)
      'lstm_blocks': (),  # The Pallas LSTM's (batch,) or (batch, time) blocks; () picks them.
  })


def recurrent_lm(cell: str, smoke: bool = False) -> ml_collections.ConfigDict:
  """The character-level recurrent language model on Shakespeare (configs/lstm.py, and with an
  Elman cell configs/rnn.py:lm, so that the RNN vs LSTM table compares cells, not recipes)."""
  config = config_lib.base_config()
  config.objective = 'language_model'
  config.dataset = config_lib.language_model_dataset('shakespeare_char')  # 128-token blocks.
  config.model = _recurrent_model(
      name='recurrent_lm', cell=cell,
      vocab_size=-1,  # From the tokenizer.
      embed_dim=128, hidden_size=512, num_layers=1, dropout_rate=0.0, tie_embeddings=False)
  config.batch_size = 32
  config.eval_batch_size = 128
  config.optimizer = 'adam'
  config.learning_rate = 3e-3  # Better than 2e-3 at every eval (experiments/lstm).
  config.schedule = 'cosine'
  config.grad_clip_norm = 1.0
  config.num_train_steps = 6000  # 27 min on 2 CPU cores at ~3.8 steps/s on one device (lstm page).
  # Two CPU devices, each running half the batch: XLA:CPU leaves a core idle in the recurrence's
  # small sequential steps (1.2-1.4x, experiments/benchmarks.md).
  config.cpu_devices = 2
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  if smoke:  # Seconds: a small model, a few steps, a slice of the validation split.
    config.model.update(hidden_size=64, embed_dim=16)
    config.dataset.update(block_size=32, num_eval_examples=64)
    config.update(batch_size=16, eval_batch_size=32, num_train_steps=20, log_every_steps=5,
                  eval_every_steps=10, checkpoint_every_steps=10, progress_bar=False)
  return config


def genre_classifier(cell: str, smoke: bool = False) -> ml_collections.ConfigDict:
  """The seed's RNN design on the Shakespeare genre task (configs/rnn.py, and with an LSTM cell
  configs/lstm.py:genre): embedding, 2 recurrent layers, the masked mean over time, dense."""
  config = config_lib.base_config()
  config.dataset = config_lib.text_classification_dataset('shakespeare_genre')
  config.model = _recurrent_model(
      name='recurrent_classifier', cell=cell,
      num_classes=-1,  # From the data (6 genres).
      vocab_size=-1,  # From the tokenizer.
      embed_dim=128, hidden_size=128, num_layers=2, bidirectional=False, pooling='mean',
      dropout_rate=0.2)
  config.batch_size = 64
  config.eval_batch_size = 256
  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.schedule = 'cosine'
  config.grad_clip_norm = 1.0
  config.num_epochs = 10
  config.cpu_devices = 2  # As the language model: ~1.4x on 2 cores (experiments/benchmarks.md).
  config.log_every_steps = 50
  if smoke:
    config.dataset.update(num_train_examples=256, num_eval_examples=128, max_len=64)
    config.model.update(hidden_size=32, embed_dim=16)
    config.update(batch_size=32, eval_batch_size=64, num_epochs=2, log_every_steps=4,
                  checkpoint_every_steps=8, progress_bar=False)
  return config


def image_classifier(smoke: bool = False) -> ml_collections.ConfigDict:
  """ResNet-20's training recipe on Fashion-MNIST without the model (configs/resnet.py), which
  configs/mobilenet.py shares so that its table compares architectures, not recipes: SGD with
  Nesterov momentum, L2 on kernels, warmup + cosine, crops and flips, whole-batch BatchNorm."""
  config = config_lib.base_config()
  config.dataset.name = 'fashion_mnist'
  config.dataset.augment = 'crop,flip'
  config.dataset.crop_padding = 2
  config.batch_size = 64
  config.eval_batch_size = 1000
  config.microbatch_size = 0  # Whole-batch BatchNorm statistics.
  config.num_epochs = 11  # ~28 min on 2 CPU cores at ~430 examples/s (experiments/resnet).
  config.optimizer = 'sgd'
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  config.learning_rate = 0.05  # 0.1 at batch 128 (He et al.), scaled linearly.
  config.schedule = 'warmup_cosine'
  config.warmup_steps = 200
  config.label_smoothing = 0.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  if smoke:
    config.dataset.update(num_train_examples=256, num_eval_examples=128)
    config.update(batch_size=32, eval_batch_size=64, num_epochs=2, warmup_steps=2,
                  log_every_steps=4, checkpoint_every_steps=8, progress_bar=False)
  return config
