"""Writes the README's results table from the committed raw records, so no figure outlives its run.

    python scripts/results_table.py          # rewrite the table in README.md
    python scripts/results_table.py --check  # exit 1 if README.md differs from the records

Each figure in the table is read from a record directory under experiments/ (written by
scripts/record_run.py: command.txt, config.json, metrics.jsonl, record.json). A row's text names
its records through `Records`: `r.lstm.eval_loss` is the last logged eval_loss of the record
aliased 'lstm', `r.lstm.wall` its wall time, `r.lstm.link` a link to the record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN = '<!-- results table: written by scripts/results_table.py from experiments/*/runs -->'
END = '<!-- end of results table -->'

RECORDS = {  # alias -> record directory under experiments/
    'cnn': 'cnn/runs/cnn_2026-12-07',
    'rnn_lm': 'rnn/runs/rnn_lm_2026-12-07',
    'lstm': 'lstm/runs/lstm_2026-12-07',
    's2s_reverse': 'transformer/runs/s2s_reverse_2026-12-07',
    's2s_add_lsd': 'transformer/runs/s2s_add_lsd_2026-12-07',
    's2s_reverse_rotary': 'transformer/runs/s2s_reverse_rotary_2026-12-07',
    'dcgan': 'gan/runs/dcgan_2026-12-07',
    'dcgan_wide': 'gan/runs/dcgan_g64_reuse_2026-12-07',
    'gpt': 'gpt/runs/make_run_2026-12-07',
    'gpt_large': 'gpt/runs/gpt_large_2026-12-07',
    'ddpm': 'diffusion/runs/ddpm_2dev_2000_2026-12-07',
    'attention_soft': 'attention/runs/soft_10ep_2026-12-07',
    'attention_topk': 'attention/runs/topk_2026-12-07',
    'resnet20': 'resnet/runs/resnet20_half_2026-12-07',
    'mobilenet_v1': 'lightweight/runs/mobilenet_v1_centred_2026-12-07',
}


class Figure(float):
  """A number with the table's formats: `pct` (93.63 %), `min` (26.5 min), `mins` (10 min 57 s)."""

  def __format__(self, spec: str) -> str:
    if spec.startswith('pct'):
      return f'{100 * self:.{spec[3:] or 2}f} %'
    if spec == 'min':
      return f'{self / 60:.1f} min'
    if spec == 'mins':
      return f'{int(self // 60)} min {int(self % 60)} s'
    if spec == 'int':
      return f'{int(self):,}'
    return format(float(self), spec)


@dataclasses.dataclass
class Record:
  """One run's raw record; attributes are the last logged value of a metric."""
  path: pathlib.Path  # experiments/<family>/runs/<name>
  rel: str  # <family>/runs/<name>
  rows: list[dict]
  info: dict

  @classmethod
  def load(cls, experiments: pathlib.Path, rel: str) -> 'Record':
    path = experiments / rel
    missing = [n for n in ('command.txt', 'config.json', 'metrics.jsonl', 'record.json')
               if not (path / n).exists()]
    if missing:
      raise SystemExit(f'{path}: the raw record lacks {", ".join(missing)}')
    rows = [json.loads(l) for l in (path / 'metrics.jsonl').read_text().splitlines() if l.strip()]
    return cls(path, rel, rows, json.loads((path / 'record.json').read_text()))

  def __getattr__(self, metric: str) -> Figure:
    values = [row[metric] for row in self.rows if metric in row]
    if not values:
      raise SystemExit(f'{self.path}: no {metric!r} in metrics.jsonl')
    return Figure(values[-1])

  @property
  def steps(self) -> Figure:
    return Figure(max(row['step'] for row in self.rows))

  @property
  def wall(self) -> Figure:
    return Figure(self.info['wall_seconds'])

  @property
  def took(self) -> str:
    """The wall time, and ' (machine shared)' where the note says other work ran beside it."""
    shared = 'shared' in self.info.get('note', '')
    return f'{self.wall:min}' + (' (machine shared)' if shared else '')

  def target(self, goal: str, ok: bool, minutes: int) -> str:
    """'target <goal> in N min: met' if `ok` held within the time budget, else '...: missed'."""
    return met(f'target {goal} in {minutes} min', ok and self.wall <= 60 * minutes)

  @property
  def epochs(self) -> int:
    return int(self.config['num_epochs'])

  @property
  def config(self) -> dict:
    return json.loads((self.path / 'config.json').read_text())

  @property
  def link(self) -> str:
    return f'[raw record](experiments/{self.rel}/)'


class Records:
  def __init__(self, experiments: pathlib.Path):
    self._records = {alias: Record.load(experiments, rel) for alias, rel in RECORDS.items()}

  def __getattr__(self, alias: str) -> Record:
    return self._records[alias]


def met(target: str, ok: bool) -> str:
  return f'{target}: {"met" if ok else "missed"}'


@dataclasses.dataclass
class Row:
  algorithm: str
  config: str
  result: Callable[[Records], str]  # The "result" cell, from the records.
  page: str  # experiments/<page>: what the table does not hold.


ROWS = [
    Row('CNN (seed: 2 conv + pool + 2 dense)', '`configs/cnn.py`', lambda r: (
        f'Fashion-MNIST **{r.cnn.eval_accuracy:pct}** test accuracy after '
        f'{r.cnn.epochs} epochs, {r.cnn.took} ({r.cnn.link})'), 'cnn'),
    Row('RNN (Elman, tanh)', '`configs/rnn.py`', lambda r: (
        f'char LM **{r.rnn_lm.eval_loss:.3f} nats/char** on held-out plays in {r.rnn_lm.took}'
        f' ({r.rnn_lm.link}); genre and row-sequential Fashion-MNIST on the page'), 'rnn'),
    Row('LSTM', '`configs/lstm.py`', lambda r: (
        f'char LM **{r.lstm.eval_loss:.3f} nats/char** on 3 held-out plays, '
        f'{r.lstm.steps:int} steps in {r.lstm.took} '
        f'({r.lstm.target("1.42", r.lstm.eval_loss <= 1.42, 30)}; '
        f'{r.lstm.link})'), 'lstm'),
    Row('Transformer', '`configs/transformer.py`, `configs/seq2seq.py`', lambda r: (
        f'encoder-decoder reversing digit strings: **{r.s2s_reverse.eval_exact_match:pct1}** exact '
        f'match after {r.s2s_reverse.steps:int} steps, {r.s2s_reverse.took}; '
        f'at 1.5x the training length {r.s2s_reverse.eval_token_accuracy_len24:pct1} of tokens '
        f'(sinusoidal positions; {r.s2s_reverse.link}), '
        f'{r.s2s_reverse_rotary.eval_token_accuracy_len24:pct1} with rotary positions '
        f'({r.s2s_reverse_rotary.link}); adding 8-digit numbers written least significant digit '
        f'first **{r.s2s_add_lsd.eval_exact_match:pct1}** ({r.s2s_add_lsd.link}); sort and the '
        'encoder classifier on the page'), 'transformer'),
    Row('GAN', '`configs/gan.py`', lambda r: (
        f'DCGAN on Fashion-MNIST, {r.dcgan.epochs} epochs in {r.dcgan.took}: '
        f'2,000 EMA samples score classifier-FID **{r.dcgan.eval_classifier_fid:.2f}** (own '
        f'classifier, not Inception), mean confidence {r.dcgan.eval_classifier_confidence:.3f} '
        f'({r.dcgan.target("0.8", r.dcgan.eval_classifier_confidence >= 0.8, 30)}), '
        f'class histogram within {r.dcgan.eval_class_histogram_ratio:.2f}x of uniform '
        f'({r.dcgan.link}); `:wide` (G at width 64) {r.dcgan_wide.epochs} epochs in '
        f'{r.dcgan_wide.took}: confidence **{r.dcgan_wide.eval_classifier_confidence:.3f}**, '
        f'FID {r.dcgan_wide.eval_classifier_fid:.2f} '
        f'({r.dcgan_wide.target("0.8", r.dcgan_wide.eval_classifier_confidence >= 0.8, 30)} on '
        f'its 2,000-sample eval, not on 10,000 samples: see the page; {r.dcgan_wide.link})'),
        'gan'),
    Row('GPT (decoder-only)', '`configs/gpt.py`', lambda r: (
        f'`make run` on a fresh clone: **{r.gpt.eval_loss:.4f} nats/char** on 3 held-out plays, '
        f'{r.gpt.steps:int} steps, {r.gpt.wall:mins} with setup '
        f'({r.gpt.target("1.47", r.gpt.eval_loss <= 1.47, 15)}; '
        f'{r.gpt.link}); `:large` (1.8 M parameters) **{r.gpt_large.eval_loss:.4f}** after '
        f'{r.gpt_large.steps:int} steps in {r.gpt_large.took} '
        f'({r.gpt_large.target("1.42", r.gpt_large.eval_loss <= 1.42, 60)}; '
        f'{r.gpt_large.link})'), 'gpt'),
    Row('Diffusion model', '`configs/diffusion.py`', lambda r: (
        f'DDPM (U-Net, cosine schedule, Min-SNR-5, EMA) on Fashion-MNIST, {r.ddpm.steps:int} steps '
        f'in {r.ddpm.took}: 2,000 DDIM-50 samples score classifier-FID '
        f'**{r.ddpm.eval_classifier_fid:.2f}** (the DCGAN {r.dcgan.eval_classifier_fid:.2f} on the '
        f'same 2,000 test images), confidence {r.ddpm.eval_classifier_confidence:.3f} '
        f'({r.ddpm.target("below the DCGAN", r.ddpm.eval_classifier_fid < r.dcgan.eval_classifier_fid, 60)}; '
        f'{r.ddpm.link})'), 'diffusion'),
    Row('Attention (soft and hard)', '`configs/attention.py`', lambda r: (
        f'soft attention over a 15x15 grid on translated Fashion-MNIST (60x60 canvas): '
        f'**{r.attention_soft.eval_accuracy:pct}** after {r.attention_soft.epochs} epochs in '
        f'{r.attention_soft.took} '
        f'({r.attention_soft.target("87 %", r.attention_soft.eval_accuracy >= 0.87, 30)}; '
        f'{r.attention_soft.link}); hard top-k attention reading 4 of 225 locations '
        f'**{r.attention_topk.eval_accuracy:pct}** in {r.attention_topk.took} '
        f'({r.attention_topk.target("85 %", r.attention_topk.eval_accuracy >= 0.85, 30)}; '
        f'{r.attention_topk.link}); Gumbel and REINFORCE on the page'),
        'attention'),
    Row('ResNet', '`configs/resnet.py`', lambda r: (
        f'ResNet-20 on Fashion-MNIST **{r.resnet20.eval_accuracy:pct}** after '
        f'{r.resnet20.epochs} epochs in {r.resnet20.took} '
        f'({r.resnet20.target("93.5 %", r.resnet20.eval_accuracy >= 0.935, 30)}; '
        f'{r.resnet20.link})'), 'resnet'),
    Row('Lightweight networks (MobileNet family)', '`configs/mobilenet.py`',
        lambda r: _mobilenet_result(r.mobilenet_v1, r.resnet20), 'lightweight'),
]


def _mobilenet_result(mobilenet: Record, resnet: Record) -> str:
  gap = resnet.eval_accuracy - mobilenet.eval_accuracy
  target = met('target within 1.5 points with >= 4x fewer MACs', gap <= 0.015)
  return (f'MobileNetV1 α = 0.35 on Fashion-MNIST **{mobilenet.eval_accuracy:pct}** after '
          f'{mobilenet.epochs} epochs in {mobilenet.took}, {100 * gap:.2f} points under ResNet-20 '
          f'with 5.7x fewer MACs ({target}; {mobilenet.link})')


def render(experiments: pathlib.Path = ROOT / 'experiments') -> str:
  records = Records(experiments)
  lines = [BEGIN, '| # | Algorithm | Config | Result (from its raw record) | More |',
           '|---|---|---|---|---|']
  for i, row in enumerate(ROWS, 1):
    page = f'[experiments/{row.page}](experiments/{row.page}/README.md)'
    lines.append(f'| {i} | {row.algorithm} | {row.config} | {row.result(records)} | {page} |')
  return '\n'.join(lines + [END])


def replace_table(readme: str, table: str) -> str:
  start, end = readme.index(BEGIN), readme.index(END) + len(END)
  return readme[:start] + table + readme[end:]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--check', action='store_true', help='fail if README.md is out of date')
  args = parser.parse_args()
  readme = (ROOT / 'README.md').read_text()
  if BEGIN not in readme or END not in readme:
    raise SystemExit(f'README.md lacks the markers {BEGIN!r} ... {END!r}')
  updated = replace_table(readme, render())
  if args.check:
    if updated != readme:
      print('README.md: the results table differs from the raw records; run '
            'python scripts/results_table.py', file=sys.stderr)
      return 1
    return 0
  (ROOT / 'README.md').write_text(updated)
  return 0


if __name__ == '__main__':
  sys.exit(main())
