"""The models train with the Pallas kernels switched on by config (interpret mode on CPU).

Each smoke config runs a few steps through `dl10_jax.main` twice, with the plain-JAX path and with
the kernel; the logged training losses agree (the kernels' own numerics are tested in
test_flash_attention.py and test_lstm_kernel.py).
"""

import pytest

from conftest import read_metrics, run_module

STEPS = ('--config.num_train_steps=3', '--config.log_every_steps=1',
         '--config.eval_every_steps=3', '--config.checkpoint_every_steps=3')


@pytest.mark.parametrize('config, field, kernel, extra', [
    ('configs/gpt.py:smoke', 'attention_impl', 'pallas_interpret', ('--config.warmup_steps=1',)),
    ('configs/transformer.py:smoke', 'attention_impl', 'pallas_interpret', ()),  # Key padding.
    ('configs/lstm.py:smoke', 'lstm_impl', 'pallas_interpret_tpu', ()),
])
def test_training_with_the_kernel_logs_the_same_losses(tmp_path, config, field, kernel, extra):
  losses = {}
  for impl in ('xla', kernel):
    workdir = tmp_path / impl
    result = run_module('dl10_jax.main', '--config', config, f'--config.model.{field}={impl}',
                        *STEPS, *extra, '--workdir', str(workdir))
    assert result.returncode == 0, result.stderr[-2000:]
    losses[impl] = [r['train_loss'] for r in read_metrics(workdir) if 'train_loss' in r]
  assert len(losses['xla']) == 3
  assert losses[kernel] == pytest.approx(losses['xla'], rel=1e-4, abs=1e-5)
