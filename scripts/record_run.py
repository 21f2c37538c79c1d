"""Runs `dl10_jax.main` and keeps its raw record: the evidence behind a reported figure.

    python scripts/record_run.py experiments/cnn/runs/cnn_2026-12-07 --note 'alone' -- \\
        --config configs/cnn.py

writes into the record directory (a few KB, committed beside the write-up):
  command.txt   the exact command, the commit and the note (what else ran on the machine)
  config.json   the run's resolved config, as main wrote it
  metrics.jsonl every logged metric, as main wrote it
  record.json   machine, commit, wall and CPU seconds, exit status (scripts/results_table.py reads it)
  run.log       the run's output without progress bars

The run itself goes to runs/<record name> (checkpoints stay out of the repository), under
tcmalloc when the machine has it, as the README's commands run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'scripts'))
from step_timing import cpu_name  # noqa: E402  (no JAX: its imports are the standard library's)
TCMALLOC = '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4'


def _commit() -> str:
  out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                       text=True, check=False)
  dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                         capture_output=True, text=True, check=False).stdout.strip()
  return out.stdout.strip() + ('+local changes' if dirty else '')


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('record', type=pathlib.Path, help='experiments/<family>/runs/<name>')
  parser.add_argument('--note', default='', help='what else ran on the machine, why this run')
  argv = sys.argv[1:]
  split = argv.index('--') if '--' in argv else len(argv)
  args = parser.parse_args(argv[:split])
  main_args = argv[split + 1:]  # dl10_jax.main's flags.
  if not any(a.startswith('--config') for a in main_args):
    parser.error('pass the run after --, e.g. -- --config configs/cnn.py')
  workdir = ROOT / 'runs' / args.record.name
  if workdir.exists():
    parser.error(f'{workdir} exists; a record starts from an empty workdir (remove it first)')
  cmd = [sys.executable, '-m', 'dl10_jax.main', *main_args, f'--workdir={workdir.relative_to(ROOT)}']
  env = dict(os.environ)
  if os.path.exists(TCMALLOC) and 'LD_PRELOAD' not in env:
    env['LD_PRELOAD'] = TCMALLOC
  commit = _commit()
  started = datetime.datetime.now(datetime.timezone.utc)
  t0 = time.monotonic()
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  wall = time.monotonic() - t0
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)

  record = ROOT / args.record if not args.record.is_absolute() else args.record
  record.mkdir(parents=True, exist_ok=True)
  for name in ('config.json', 'metrics.jsonl'):
    if (workdir / name).exists():
      shutil.copy(workdir / name, record / name)
  shown = ' '.join(shlex.quote(c) for c in ['python', *cmd[1:]])
  preload = f'LD_PRELOAD={env["LD_PRELOAD"]} ' if env.get('LD_PRELOAD') else ''
  (record / 'command.txt').write_text(
      f'# main at {commit}, {started:%Y-%m-%d %H:%M} UTC. {args.note}\n{preload}{shown}\n')
  lines = (proc.stdout + proc.stderr).replace('\r', '\n').splitlines()
  log = [l for l in lines if l.strip() and not ('it/s]' in l or 's/it]' in l or '%|' in l)]
  (record / 'run.log').write_text('\n'.join(log[-200:]) + '\n')
  (record / 'record.json').write_text(json.dumps({
      'command': shown, 'commit': commit, 'started_utc': started.isoformat(timespec='seconds'),
      'wall_seconds': round(wall, 1), 'user_seconds': round(usage.ru_utime, 1),
      'system_seconds': round(usage.ru_stime, 1), 'exit_status': proc.returncode,
      'allocator': 'tcmalloc' if env.get('LD_PRELOAD') else 'glibc',
      'machine': f'{cpu_name()}, {os.cpu_count()} cores', 'note': args.note,
      'python': platform.python_version()}, indent=1) + '\n')
  print(f'{record}: exit {proc.returncode}, {wall / 60:.1f} min')
  return proc.returncode


if __name__ == '__main__':
  sys.exit(main())
