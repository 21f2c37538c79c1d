"""OUT/summary.md of a scripts/device_check.sh run, from its raw records and logs alone.

Every step gets a row: its figure, or in plain words why there is none (timed out, failed, not
reached, skipped). No JAX: the summary is written even where the steps could not start.
"""

from __future__ import annotations

import json
import pathlib

RECORDS = 'records.jsonl'
# The steps of scripts/device_check.sh, in its order, with the log each writes.
STEPS = {'gpt2': 'gpt2.log', 'gpt_target': 'gpt_target.log', 'resnet50': 'resnet50.log',
         'ddpm_dcgan': 'ddpm_dcgan.log', 'attention': 'kernels.log', 'lstm': 'kernels.log'}


def read_records(out: pathlib.Path) -> list[dict]:
  path = out / RECORDS
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      pass  # A line cut by a kill.
  return rows


def _gpt2(rows: list[dict]) -> str:
  fitted = [r for r in rows if 'error' not in r]
  tried = ', '.join(f'{r["batch_size"]}' + (' (out of memory)' if 'error' in r else '')
                    for r in rows)
  if not fitted:
    return f'no batch fitted (tried {tried})'
  r = fitted[-1]
  return (f'{r["tokens_per_sec"]:,.0f} tokens/s, MFU {r["mfu"]:.1%} of {r["peak_flops"] / 1e12:.3g}'
          f' TFLOP/s at batch {r["batch_size"]} x {r["block_size"]} ({r["device"]}; '
          f'{_wait(1 - r["fed_tokens_per_sec"] / r["tokens_per_sec"])}; batches tried: {tried})')


def _wait(fraction: float) -> str:
  """The share of step time spent waiting for grain: the fed steps' slowdown over resident ones
  (a negative one is noise)."""
  return f'data wait {fraction:.1%}' if fraction > 0 else 'no data wait measurable'



def _gpt_target(rows: list[dict]) -> str:
  result = [r for r in rows if r.get('result')]
  evals = [r for r in rows if 'eval_loss_per_char' in r]
  if not result:
    if not evals:
      return ''
    last = evals[-1]
    return (f'not reached: eval {last["eval_loss_per_char"]:.3f} nats/char at step '
            f'{last["step"]}, {last["wall_s"]:.0f} s (then stopped)')
  r = result[-1]
  if r['ended'] == 'finished' and r['exit_code']:
    return f'training failed (exit {r["exit_code"]}) after {r["wall_s"]:.0f} s'
  if r['best_eval_loss'] is None:
    return f'no eval within {r["wall_s"]:.0f} s (stopped at its budget)'
  if r['target'] is None:
    return f'tiny run, no target: best eval {r["best_eval_loss"]:.3f} nats/char after ' \
           f'{r["wall_s"]:.1f} s'
  if r['reached']:
    return (f'{r["target"]} nats/char reached at step {r["step"]} in {r["wall_s"]:.1f} s from '
            f'launch ({r["device"]})')
  why = 'training ended' if r['ended'] == 'finished' else 'stopped at its budget'
  return (f'{r["target"]} not reached in {r["wall_s"]:.0f} s ({why}; best eval '
          f'{r["best_eval_loss"]:.3f} nats/char)')


def _images(rows: list[dict]) -> str:
  return '; '.join(
      f'{r["model"]}: {r["examples_per_sec"]:,.0f} examples/s at batch {r["batch_size"]} '
      f'{"x".join(map(str, r["image_shape"]))} {r["dtype"]} (fed by grain '
      f'{r["fed_examples_per_sec"]:,.0f}, {_wait(r["data_wait_fraction"])})'
      for r in rows)


def kernel_rows(log: str, section: str) -> str:
  """'shape: impl ms, ...' (forward + backward) from scripts/bench_kernels.py's table of `section`
  ('attention' or 'LSTM') in its log."""
  shapes, inside = {}, False
  for line in log.splitlines():
    if line.startswith(('attention on', 'LSTM layer on')):
      inside = line.startswith(section)
      continue
    words = line.split()
    failed = 'n/a:' in words[3:6]  # An implementation this machine could not run.
    if not inside or not (len(words) == 9 or failed) or words[0] == 'impl':
      continue
    try:
      time = 'n/a' if failed else f'{float(words[7 if section == "attention" else 6]):g}'
    except ValueError:
      continue
    shape = (f'T {words[1]} D {words[2]}' if section == 'attention'
             else f'H {words[1]} T {words[2]}')
    extra = f' ({words[8]}x scan)' if section == 'LSTM' and not failed else ''
    shapes.setdefault(shape, []).append(f'{words[0]} {time}{extra}')
  return '; '.join(f'{shape}: ' + ', '.join(impls) + ' ms fwd+bwd'
                   for shape, impls in shapes.items())


def figure(step: str, rows: list[dict], out: pathlib.Path) -> str:
  """The step's figure from its records (and log), or '' where it has none."""
  if step in ('attention', 'lstm'):
    log = out / STEPS[step]
    return kernel_rows(log.read_text(errors='replace'), 'attention' if step == 'attention'
                       else 'LSTM') if log.exists() else ''
  if not rows:
    return ''
  return {'gpt2': _gpt2, 'gpt_target': _gpt_target}.get(step, _images)(rows)


def status(step: str, shell: dict | None) -> str:
  """How the step ended, from the line scripts/device_check.sh wrote for it."""
  if shell is None:
    return 'not run'
  if 'skipped' in shell:
    return f'skipped: {shell["skipped"]}'
  if shell['exit'] == 124:
    return f'timed out at its {shell["limit_s"]} s limit'
  if shell['exit']:
    return f'failed (exit {shell["exit"]}; see {STEPS[step]})'
  return f'done in {shell["seconds"]} s (limit {shell["limit_s"]} s)'


def write(out: pathlib.Path) -> str:
  records = read_records(out)
  lines = ['# Device check', '', f'Raw records: {RECORDS}; logs: one per step.', '',
           '| step | figure | how it ended |', '|---|---|---|']
  for step in STEPS:
    rows = [r for r in records if r.get('check') == step and 'exit' not in r
            and 'skipped' not in r]
    shell = next((r for r in reversed(records) if r.get('check') == step
                  and ('exit' in r or 'skipped' in r)), None)
    try:
      text = figure(step, rows, out)
    except (KeyError, TypeError, ValueError) as e:  # A malformed record must not hide the rest.
      text = f'unreadable record ({type(e).__name__}: {e})'
    lines.append(f'| {step} | {text or "no figure"} | {status(step, shell)} |')
  summary = '\n'.join(lines) + '\n'
  (out / 'summary.md').write_text(summary)
  print(summary)
  return summary


if __name__ == '__main__':
  import sys
  write(pathlib.Path(sys.argv[1]))
