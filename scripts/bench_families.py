"""Training-step speed of every family: against PyTorch, or under several XLA:CPU flag sets.

  python scripts/bench_families.py --torch                 # experiments/benchmarks/records.jsonl
  python scripts/bench_families.py --flag_sets none,onednn_fusions --rounds 2 \
      --out experiments/xla_flags/records.jsonl            # chooses dl10_jax.runtime's defaults
  python scripts/bench_families.py --rounds 0 --out FILE   # only the table of FILE's records

Every (config, flag set) point is a fresh process of scripts/benchmark.py, since XLA reads its
flags once per process; `default` is dl10_jax's own flags (runtime.DEFAULT_XLA_CPU_FLAGS), the
other sets replace them. Rounds alternate over configs and flag sets, so drift on a shared machine
spreads over all of them. Each call's timings are appended to --out; the table (medians over every
call in --out) is printed and written beside it as markdown.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

FAMILIES = ('configs/cnn.py', 'configs/resnet.py', 'configs/mobilenet.py', 'configs/lstm.py',
            'configs/rnn.py:lm', 'configs/gpt.py', 'configs/gpt.py:mini', 'configs/gan.py',
            'configs/diffusion.py')
_ONEDNN_FUSIONS = '--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce'
_XNN_GREEDY = '--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY'
FLAG_SETS = {
    'default': None,  # dl10_jax's defaults.
    'none': '',
    'onednn': '--xla_cpu_use_onednn=true',
    'onednn_fusions': _ONEDNN_FUSIONS,
    'onednn+fusions': f'--xla_cpu_use_onednn=true {_ONEDNN_FUSIONS}',
    'xnn_graph_greedy': _XNN_GREEDY,
    'xnn_graph_greedy+onednn_fusions': f'{_XNN_GREEDY} {_ONEDNN_FUSIONS}',
    'xnn_fusions': '--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce',
    'ynn_fusions': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
}


def measure(config: str, flag_set: str, args: argparse.Namespace) -> dict | None:
  """One benchmark process; its record, or None (and the error printed) if it failed."""
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  if FLAG_SETS[flag_set] is not None:
    env.update(XLA_FLAGS=FLAG_SETS[flag_set], DL10_DEFAULT_XLA_FLAGS='0')
  record = pathlib.Path(args.out).with_suffix('.tmp')
  record.unlink(missing_ok=True)
  command = [sys.executable, str(ROOT / 'scripts' / 'benchmark.py'), f'--config={config}',
             f'--steps={args.steps}', f'--warmup={args.warmup}', f'--repeats={args.repeats}',
             '--out=', f'--record={record}'] + (['--torch'] if args.torch else [])
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  if result.returncode:
    print(f'{config} [{flag_set}] failed:\n{result.stderr[-2000:]}', file=sys.stderr)
    return None
  data = json.loads(record.read_text())
  record.unlink()
  return data


def _family_order(config: str) -> int:
  return FAMILIES.index(config) if config in FAMILIES else len(FAMILIES)


def flags_table(records: list[dict]) -> str:
  """Median steps/s per config and flag set, and the ratio to no flags."""
  calls = collections.defaultdict(list)
  for r in records:
    for row in r['jax'].values():
      calls[r['config_file'], r['flag_set']] += row['seconds_per_step']
  configs = sorted({c for c, _ in calls}, key=_family_order)
  names = [n for n in FLAG_SETS if any((c, n) in calls for c in configs)]
  lines = ['| config | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for config in configs:
    base = calls.get((config, 'none'))
    cells = []
    for name in names:
      if (config, name) not in calls:
        cells.append('—')  # Not measured, or failed (its error was printed).
        continue
      rate = 1 / statistics.median(calls[config, name])
      ratio = f' ({statistics.median(base) * rate:.2f}x)' if base else ''
      cells.append(f'{rate:.2f}{ratio}')
    lines.append(f'| {config} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def torch_table(records: list[dict]) -> str:
  """Per config: JAX and PyTorch eager examples/s (medians over every call), their ratio, and
  model FLOP/s against both libraries' float32 matmul peaks."""
  by_config = collections.defaultdict(list)
  for r in records:
    if r.get('torch_seconds_per_step', {}).get('eager'):
      by_config[r['config_file']].append(r)
  lines = ['| config | batch | JAX devices | jax examples/s | torch eager examples/s | '
           'jax / torch | model GFLOP/s | of jax matmul peak | of torch matmul peak | allocator | '
           'XLA_FLAGS |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for config in sorted(by_config, key=_family_order):
    runs = by_config[config]
    batch = runs[0]['batch_size']
    jax_calls = [t for r in runs for row in r['jax'].values() for t in row['seconds_per_step']]
    torch_calls = [t for r in runs for t in r['torch_seconds_per_step']['eager']]
    jax_rate, torch_rate = batch / statistics.median(jax_calls), \
        batch / statistics.median(torch_calls)
    flops = statistics.median(row['flops_per_sec'] / row['steps_per_sec']
                              for r in runs for row in r['jax'].values()) * jax_rate / batch
    jax_peak = statistics.median(r['jax_matmul_peak'] for r in runs)
    torch_peak = statistics.median(r['torch_matmul_peak'] for r in runs)
    unit = f' ({runs[0]["tokens_per_example"]} tokens each)' if runs[0]['tokens_per_example'] \
        else ''
    devices = re.search(r'(\d+) JAX device', runs[0]['device'])  # Older records: one.
    lines.append(f'| {config} | {batch}{unit} | {devices[1] if devices else 1} | '
                 f'{jax_rate:.1f} | {torch_rate:.1f} | '
                 f'**{jax_rate / torch_rate:.2f}x** | {flops / 1e9:.1f} | '
                 f'{flops / jax_peak:.1%} | {flops / torch_peak:.1%} | '
                 f'{runs[0]["allocator"]} | `{runs[0]["xla_flags"]}` |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(FAMILIES))
  parser.add_argument('--flag_sets', default='default')
  parser.add_argument('--torch', action='store_true', help='also time the PyTorch twins')
  parser.add_argument('--rounds', type=int, default=1, help='0: only the table of --out')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default=str(ROOT / 'experiments' / 'benchmarks' / 'records.jsonl'))
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  for round_ in range(args.rounds):
    for config in args.configs.split(','):
      for flag_set in args.flag_sets.split(','):
        data = measure(config, flag_set, args)
        if data is None:
          continue
        data.update(config_file=config, flag_set=flag_set, round=round_)
        with out.open('a') as f:
          f.write(json.dumps(data) + '\n')
        for label, row in data['jax'].items():
          print(f'round {round_} {config} [{flag_set}] {label}: {row["steps_per_sec"]:.2f} '
                'steps/s', flush=True)
  records = [json.loads(line) for line in out.read_text().splitlines()]
  text = torch_table(records) if any(r.get('torch_seconds_per_step') for r in records) \
      else flags_table(records)
  print(text)
  out.with_suffix('.md').write_text(
      f'Written by scripts/bench_families.py from every record in {out.name}: medians over every '
      f'timed call.\n\n{text}\n')


if __name__ == '__main__':
  main()
