"""Training-step speed of each family under XLA:CPU flag sets, to choose dl10_jax.runtime's defaults.

  python scripts/bench_xla_flags.py --out experiments/xla_flags/records.jsonl
  python scripts/bench_xla_flags.py --configs configs/cnn.py,configs/gpt.py --rounds 2

XLA reads its flags once per process, so every (config, flag set) point is a fresh process of
scripts/benchmark.py (JAX only), run with the given flags and none of dl10_jax's defaults. Rounds
alternate over the flag sets, so drift on a shared machine spreads over all of them; each call's
timings are appended to --out, and the table (median steps/s over every call of every round, and
the ratio to no flags) is printed and written beside it as README-ready markdown.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

FAMILIES = ('configs/cnn.py', 'configs/resnet.py', 'configs/mobilenet.py', 'configs/lstm.py',
            'configs/rnn.py', 'configs/gpt.py', 'configs/gan.py', 'configs/diffusion.py')
FLAG_SETS = {
    'none': '',
    'onednn': '--xla_cpu_use_onednn=true',
    'onednn+fusions': '--xla_cpu_use_onednn=true '
                      '--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce',
    'xnn_graph_greedy': '--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY',
    'xnn_fusions': '--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce',
    'ynn_fusions': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
}


def measure(config: str, flags: str, args: argparse.Namespace) -> dict | None:
  """One benchmark process; its record, or None (and the error printed) if it failed."""
  env = dict(os.environ, XLA_FLAGS=flags, DL10_DEFAULT_XLA_FLAGS='0')
  record = pathlib.Path(args.out).with_suffix('.tmp')
  record.unlink(missing_ok=True)
  command = [sys.executable, str(ROOT / 'scripts' / 'benchmark.py'), f'--config={config}',
             f'--steps={args.steps}', f'--warmup={args.warmup}', f'--repeats={args.repeats}',
             '--out=', f'--record={record}']
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  if result.returncode:
    print(f'{config} [{flags or "none"}] failed:\n{result.stderr[-2000:]}', file=sys.stderr)
    return None
  data = json.loads(record.read_text())
  record.unlink()
  return data


def table(records: list[dict]) -> str:
  calls = collections.defaultdict(list)
  for r in records:
    (jax_row,) = r['jax'].values()
    calls[r['config_file'], r['flag_set']] += jax_row['seconds_per_step']
  configs = sorted({c for c, _ in calls}, key=lambda c: FAMILIES.index(c) if c in FAMILIES else 99)
  names = [n for n in FLAG_SETS if any((c, n) in calls for c in configs)]
  lines = ['| config | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for config in configs:
    base = calls.get((config, 'none'))
    cells = []
    for name in names:
      if (config, name) not in calls:
        cells.append('failed')
        continue
      rate = 1 / statistics.median(calls[config, name])
      ratio = f' ({statistics.median(base) * rate:.2f}x)' if base else ''
      cells.append(f'{rate:.2f}{ratio}')
    lines.append(f'| {config} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(FAMILIES))
  parser.add_argument('--flag_sets', default=','.join(FLAG_SETS))
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default=str(ROOT / 'experiments' / 'xla_flags' / 'records.jsonl'))
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  records = []
  for round_ in range(args.rounds):
    for config in args.configs.split(','):
      for name in args.flag_sets.split(','):
        data = measure(config, FLAG_SETS[name], args)
        if data is None:
          continue
        data.update(config_file=config, flag_set=name, round=round_)
        records.append(data)
        with out.open('a') as f:
          f.write(json.dumps(data) + '\n')
        (row,) = data['jax'].values()
        print(f'round {round_} {config} {name}: {row["steps_per_sec"]:.2f} steps/s', flush=True)
  text = table(records)
  print(text)
  out.with_suffix('.md').write_text(
      'Median training steps/s over every call (ratio to no flags), from '
      f'{out.name}; written by scripts/bench_xla_flags.py.\n\n{text}\n')


if __name__ == '__main__':
  main()
