"""The measurements of scripts/device_check.sh, one step per call, each appending its raw records
to OUT/records.jsonl as it goes (a step killed at its time limit keeps what it measured; one file
for all, since a lent machine sends back only a few).

  python scripts/device_check.py gpt2 --results OUT        # GPT-2 124M: tokens/s, MFU
  python scripts/device_check.py gpt_target --results OUT  # configs/gpt.py: seconds to 1.47
  python scripts/device_check.py resnet50 --results OUT    # ResNet-50 at 224, synthetic images
  python scripts/device_check.py ddpm_dcgan --results OUT  # the DDPM U-Net and DCGAN steps

--tiny runs each at toy sizes (on a CPU, in seconds), so that the test suite keeps them working.
The throughput figures come from scripts/step_timing.py, as scripts/benchmark.py's do (medians
over every timed call; the calls themselves are in the records).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'scripts'))

import step_timing  # noqa: E402
import device_summary  # noqa: E402

_OUT = flags.DEFINE_string('results', '', 'Folder for the records (made if missing).')
_TINY = flags.DEFINE_bool('tiny', False, 'Toy sizes, for a CPU and the test suite.')
_BUDGET = flags.DEFINE_float('budget_s', 100.0, 'Seconds this step may take; it stops itself '
                             'in time to write its record (the shell\'s timeout is the backstop).')
_TARGET = flags.DEFINE_float('target', 1.47, 'gpt_target: eval nats per character to reach.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 100, 'gpt_target: steps between evals.')
_GPT2_BATCHES = flags.DEFINE_list('gpt2_batches', ['16', '32', '64', '128'],
                                  'gpt2: batch sizes tried, ascending, until one does not fit.')
_RESNET_BATCH = flags.DEFINE_integer('resnet_batch', 256, 'resnet50: batch size.')
# As benchmark.py's, at what fits the time limits of a lent machine.
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps first (compilation, caches).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement (the median is kept).')


def _timing() -> tuple[int, int, int]:
  return (2, 1, 1) if _TINY.value else (_STEPS.value, _WARMUP.value, _REPEATS.value)


def _record(step: str, row: dict) -> None:
  """One JSON line in OUT/records.jsonl, flushed at once."""
  row = {'check': step, **row}  # 'check': rows carry a training 'step' of their own.
  with open(pathlib.Path(_OUT.value) / device_summary.RECORDS, 'a') as f:
    f.write(json.dumps(row) + '\n')
  print(json.dumps({k: v for k, v in row.items() if 'seconds_per_step' not in k}), flush=True)


def _load(name: str, arg: str = ''):
  """configs/<name>.py's get_config(arg)."""
  import importlib
  return importlib.import_module(f'configs.{name}').get_config(arg or None)


def _device() -> dict:
  import jax
  from dl10_jax.train import throughput
  return {'device': jax.devices()[0].device_kind, 'backend': jax.default_backend(),
          'jax': jax.__version__, 'peak_flops': throughput.peak_flops()}


def step_gpt2() -> None:
  """GPT-2 small (124M: 12 x 768, vocabulary 50,304 = 50,257 padded as nanoGPT does), T 1024,
  bf16, AdamW (XLA fuses optax's update under jit), at growing batches until one does not fit."""
  from dl10_jax import config_recipes
  config = _load('gpt', 'smoke' if _TINY.value else '')
  if not _TINY.value:
    config.model.update(config_recipes.GPT_SIZES['gpt2'], vocab_size=50304)
    config.dataset.block_size = 1024
  else:
    config.dataset.block_size = 64
  config.update(dtype='bfloat16', optimizer='adamw', microbatch_size=0)
  batches = [2, 4] if _TINY.value else [int(b) for b in _GPT2_BATCHES.value]
  device = _device()
  deadline = time.monotonic() + _BUDGET.value
  tokens = config.dataset.block_size

  def on_try(row):
    if 'error' not in row:
      row.update(tokens_per_sec=row['examples_per_sec'] * tokens,
                 fed_tokens_per_sec=row['fed_examples_per_sec'] * tokens,
                 mfu=row['flops_per_sec'] / device['peak_flops'])
    _record('gpt2', {**device, 'block_size': tokens, 'dtype': config.dtype, **row})

  step_timing.largest_batch_throughput(config, batches, *_timing(), deadline, on_try)


def step_gpt_target() -> None:
  """configs/gpt.py as `make run` trains it, in bf16 with an eval every --eval_every steps, as a
  child process; each metrics.jsonl line is recorded with the seconds since the launch, and the
  run is stopped once an eval reaches --target (in tiny mode: the smoke config to its end)."""
  # Outside OUT: checkpoints need not travel back from a lent machine.
  workdir = pathlib.Path(tempfile.mkdtemp(prefix='device_check_gpt_'))
  target = None if _TINY.value else _TARGET.value
  command = [sys.executable, '-m', 'dl10_jax.main',
             '--config', 'configs/gpt.py' + (':smoke' if _TINY.value else ''),
             '--workdir', str(workdir), '--config.dtype=bfloat16',
             f'--config.eval_every_steps={_EVAL_EVERY.value}', '--config.progress_bar=False']
  if _TINY.value:  # One eval, at the end.
    command += ['--config.num_train_steps=10', '--config.log_every_steps=5']
  else:  # A cold start, as on a fresh machine (tiny: the tests' reruns are quick).
    command.append('--config.compilation_cache_dir=off')
  start = time.monotonic()
  child = subprocess.Popen(command, cwd=ROOT)
  metrics, seen, reached, best, ended = workdir / 'metrics.jsonl', 0, None, None, 'budget'
  try:
    while True:
      done = child.poll() is not None
      text = metrics.read_text() if metrics.exists() else ''
      lines = text[:text.rfind('\n') + 1].splitlines()  # Whole lines: one may be half written.
      for line in lines[seen:]:
        row = {**json.loads(line), 'wall_s': round(time.monotonic() - start, 2)}
        _record('gpt_target', row)
        loss = row.get('eval_loss_per_char')
        if loss is not None:
          best = loss if best is None else min(best, loss)
          if target is not None and loss <= target and reached is None:
            reached = row
      seen = len(lines)
      if reached or done:
        ended = 'reached' if reached else 'finished'
        break
      if time.monotonic() - start > _BUDGET.value:
        break
      time.sleep(0.2)
  finally:
    if child.poll() is None:
      child.terminate()
      try:
        child.wait(10)
      except subprocess.TimeoutExpired:
        child.kill()
  elapsed = time.monotonic() - start
  _record('gpt_target', {'result': True, 'target': target, 'reached': reached is not None,
                         'ended': ended,  # reached | finished (training ended) | budget
                         'wall_s': reached['wall_s'] if reached else round(elapsed, 2),
                         'step': reached['step'] if reached else None, 'best_eval_loss': best,
                         'exit_code': child.returncode, **_device()})


def _images_step(step: str, name: str, config, shape: tuple[int, int, int], classes: int) -> None:
  """examples/s of `config`'s train step on random images of `shape` (records of every call)."""
  config.update(microbatch_size=0, progress_bar=False)
  with step_timing.synthetic_images(shape, classes, max(2 * config.batch_size, 16)):
    r = step_timing.jax_step_throughput(config, *_timing(), flops=math.nan)
  wait = 1 - r['fed_examples_per_sec'] / r['examples_per_sec']
  _record(step, {'model': name, 'batch_size': config.batch_size, 'dtype': config.dtype,
                 'image_shape': shape, 'data_wait_fraction': wait, **_device(),
                 **{k: v for k, v in r.items() if k != 'flops_per_sec'}})


def step_resnet50() -> None:
  """ResNet-50 (He et al.'s ImageNet design), 224 x 224 x 3, 1,000 classes, bf16, SGD; in tiny
  mode ResNet-18 at 32 x 32 and batch 2."""
  config = _load('resnet', 'smoke')
  tiny = _TINY.value
  config.model.update(style='imagenet', depth=18 if tiny else 50, shortcut='projection')
  config.update(dtype='bfloat16', batch_size=2 if tiny else _RESNET_BATCH.value)
  size = 32 if tiny else 224
  _images_step('resnet50', f'resnet{config.model.depth}', config, (size, size, 3), 1000)


def step_ddpm_dcgan() -> None:
  """The configs' own DDPM U-Net and DCGAN (28 x 28 grey, batch 64, float32) steps; tiny: smoke."""
  for name in ('diffusion', 'gan'):
    config = _load(name, 'smoke' if _TINY.value else '')
    config.quality_metric = False  # Eval only; the step does not use it.
    _images_step('ddpm_dcgan', config.model.name, config, (28, 28, 1), 10)


STEPS = {'gpt2': step_gpt2, 'gpt_target': step_gpt_target, 'resnet50': step_resnet50,
         'ddpm_dcgan': step_ddpm_dcgan}


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in STEPS:
    raise app.UsageError(f'one step: {", ".join(STEPS)}')
  if not _OUT.value:
    raise app.UsageError('--results is required')
  os.makedirs(_OUT.value, exist_ok=True)
  STEPS[argv[1]]()


if __name__ == '__main__':
  app.run(main)
