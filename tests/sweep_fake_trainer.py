"""A stand-in for dl10_jax.main in tests/test_sweep.py (DL10_SWEEP_TRAINER=tests.sweep_fake_trainer
in the sweep's environment): the same arguments and files, no JAX, so that a sweep takes seconds.

Each of num_train_steps steps (default 6) sleeps FAKE_STEP_S seconds (default 0.1) and logs an
eval_loss that falls with the step and grows with the distance of log10(learning_rate) from -3.
WORKDIR/fake_step plays the checkpoint: a rerun resumes after it. Every start appends
{pid, start_step} to WORKDIR/starts.jsonl. learning_rate >= 1 fails like a bad value (exit 2).
"""

import json
import math
import os
import pathlib
import sys
import time


def main(argv: list[str]) -> None:
  workdir = pathlib.Path(argv[argv.index('--workdir') + 1])
  overrides = dict(a[len('--config.'):].split('=', 1) for a in argv if a.startswith('--config.'))
  learning_rate = float(overrides.get('learning_rate', 1e-3))
  if learning_rate >= 1:
    print(f'error: learning_rate={learning_rate} is too large for the fake', file=sys.stderr)
    sys.exit(2)
  workdir.mkdir(parents=True, exist_ok=True)
  checkpoint = workdir / 'fake_step'
  start = int(checkpoint.read_text()) if checkpoint.exists() else 0
  with open(workdir / 'starts.jsonl', 'a') as f:
    f.write(json.dumps({'pid': os.getpid(), 'start_step': start}) + '\n')
  if start:
    print(f'Resumed from the checkpoint of step {start} in {workdir}')
  num_steps = int(overrides.get('num_train_steps', 6))
  with open(workdir / 'metrics.jsonl', 'a') as metrics:
    for step in range(start + 1, num_steps + 1):
      time.sleep(float(os.environ.get('FAKE_STEP_S', '0.1')))
      loss = abs(math.log10(learning_rate) + 3) + 1 / step
      metrics.write(json.dumps({'step': step, 'train_loss': loss}) + '\n')
      metrics.write(json.dumps({'step': step, 'eval_loss': loss}) + '\n')
      metrics.flush()
      checkpoint.write_text(str(step))
  print(f'eval_loss={abs(math.log10(learning_rate) + 3) + 1 / num_steps:.4f}')


if __name__ == '__main__':
  main(sys.argv[1:])
