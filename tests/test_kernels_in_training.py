"""The models train with the Pallas kernels switched on by config (interpret mode on CPU).

Each smoke config trains a few steps twice (in this process: the CLI is tested in test_main.py),
with the plain-JAX path and with the kernel; the logged training losses agree (the kernels' own
numerics are tested in test_flash_attention.py and test_lstm_kernel.py).
"""

import pytest

from configs import gpt, lstm, transformer
from conftest import read_metrics
from dl10_jax.train.trainer import train_and_evaluate

STEPS = dict(num_train_steps=3, log_every_steps=1, eval_every_steps=3, checkpoint_every_steps=3,
             progress_bar=False)


@pytest.mark.slow
@pytest.mark.parametrize('config_module, field, kernel, extra', [
    (gpt, 'attention_impl', 'pallas_interpret', {'warmup_steps': 1}),
    (transformer, 'attention_impl', 'pallas_interpret', {}),  # Key padding.
    (lstm, 'lstm_impl', 'pallas_interpret_tpu', {}),
], ids=['gpt', 'transformer', 'lstm'])
def test_training_with_the_kernel_logs_the_same_losses(tmp_path, config_module, field, kernel,
                                                       extra):
  losses = {}
  for impl in ('xla', kernel):
    config = config_module.get_config('smoke')
    config.update(STEPS, **extra)
    config.model[field] = impl
    workdir = tmp_path / impl
    train_and_evaluate(config, workdir)
    losses[impl] = [r['train_loss'] for r in read_metrics(workdir) if 'train_loss' in r]
  assert len(losses['xla']) == 3
  assert losses[kernel] == pytest.approx(losses['xla'], rel=1e-4, abs=1e-5)
