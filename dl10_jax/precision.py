"""Which compute dtype `dtype='auto'` picks for a model on a backend (no JAX: finalize runs it).

Every family keeps float32 parameters, optimizer state and loss; 'bfloat16' only changes the dtype
of the matmuls, convolutions and activations between them. On CPU float32 stays the default: even
with AMX, XLA:CPU runs bf16 matmuls fast in one operand layout only (or through opt-in oneDNN flags)
and bf16 convolutions slower than float32 (experiments/xla_flags/README.md). On GPU and TPU a family
runs bf16 when the parts that need range or precision already run in float32, as checked below.
Measured on the smoke configs (CPU, same seed, 60-200 steps), the largest per-step gap of the bf16
training loss to float32's: GPT 0.7 %, CNN 2.7 %, LSTM 0.24 %, Transformer 0.12 %, RNN 0.07 %,
diffusion 0.05 % (tests/test_precision.py holds GPT and CNN to bands).
"""

from __future__ import annotations

DTYPES = ('auto', 'float32', 'bfloat16', 'float16')
ACCELERATORS = ('gpu', 'tpu')

# model.name -> the dtype 'auto' picks on an accelerator, and why it is safe there.
AUTO_DTYPE: dict[str, tuple[str, str]] = {
    # Classifiers: logits are cast to float32 before the softmax cross-entropy; BatchNorm
    # statistics are computed in float32 by flax whatever the input dtype.
    'cnn': ('bfloat16', 'float32 logits and loss'),
    'resnet': ('bfloat16', 'float32 logits, loss and BatchNorm statistics'),
    'mobilenet_v1': ('bfloat16', 'float32 logits, loss and BatchNorm statistics'),
    'mobilenet_v2': ('bfloat16', 'float32 logits, loss and BatchNorm statistics'),
    'shufflenet_v2': ('bfloat16', 'float32 logits, loss and BatchNorm statistics'),
    'quality_net': ('bfloat16', 'float32 logits and loss'),
    # Attention: scores and softmax in float32 (models/attention.py), LayerNorm statistics in
    # float32, logits cast to float32 before the token losses.
    'gpt': ('bfloat16', 'float32 attention softmax, LayerNorm statistics, logits and loss'),
    'transformer_classifier': ('bfloat16', 'float32 attention softmax, logits and loss'),
    'encoder_decoder': ('bfloat16', 'float32 attention softmax, logits and loss'),
    # Hard attention: Gumbel noise, sampled choices and REINFORCE log-probs are float32.
    'attention_classifier': ('bfloat16', 'float32 scores, policy log-probs, logits and loss'),
    # RNN/LSTM: the carry (h, c) and the gates stay float32 over time (the scan and the fused
    # kernel); only the matmul inputs are bf16, with float32 accumulation, so rounding does not
    # compound along the sequence.
    'recurrent_lm': ('bfloat16', 'float32 carry, gates, logits and loss'),
    'recurrent_classifier': ('bfloat16', 'float32 carry, gates, logits and loss'),
    # Diffusion: the U-Net's prediction is cast to float32 before the MSE; the noise schedule and
    # the sampler's arithmetic are float32; GroupNorm statistics float32.
    'unet': ('bfloat16', 'float32 prediction, MSE and sampler'),
    # GAN: discriminator logits and the BCE losses float32, generator tanh output float32.
    'dcgan': ('bfloat16', 'float32 discriminator logits, losses and BatchNorm statistics'),
}


def resolve_dtype(dtype: str, model_name: str, backend: str) -> tuple[str, str]:
  """(the compute dtype, why): 'auto' -> float32 on CPU (and for a model not in AUTO_DTYPE), the
  table's choice on GPU and TPU; any other value is kept as it is."""
  if dtype != 'auto':
    return dtype, 'set in the config'
  if backend not in ACCELERATORS:
    return 'float32', f'the default on {backend}'
  if model_name not in AUTO_DTYPE:
    return 'float32', f'model {model_name!r} has no entry in precision.AUTO_DTYPE'
  choice, reason = AUTO_DTYPE[model_name]
  return choice, f'{model_name} on {backend}: {reason}'
