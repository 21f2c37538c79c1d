"""A sweep's summary: summary.csv (every field), summary.md (a table, best first) and summary.png
(the swept metric over steps for every point, and each point's final value).

Rewritten whole after every change, each file atomically, so that several workers may write them.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
import time
from typing import Any

from dl10_jax.sweeps.runner import Spec, write_atomic
from dl10_jax.sweeps.storage import redact

# Columns of the final metrics: the swept one first, then these if logged, in this order.
_PREFERRED = ('eval_loss', 'eval_accuracy', 'train_loss', 'train_accuracy')


def _order(rows: list[dict[str, Any]], spec: Spec) -> list[dict[str, Any]]:
  """Finished points, best final value of the metric first; then the others in sweep order."""
  scored = [r for r in rows if r['status'] == 'done' and spec.metric in r['final']]
  scored.sort(key=lambda r: r['final'][spec.metric] * (1 if spec.mode == 'min' else -1))
  return scored + [r for r in rows if r not in scored]


def _columns(rows: list[dict[str, Any]], spec: Spec) -> tuple[list[str], list[str]]:
  keys = list(dict.fromkeys(k for r in rows for k in r['overrides']))
  logged = {k for r in rows for k in r['final']}
  metrics = [m for m in dict.fromkeys((spec.metric, *_PREFERRED)) if m in logged]
  metrics += sorted(k for k in logged if k.startswith('eval_') and k not in metrics)
  return keys, metrics


def _fmt(value: Any) -> str:
  if value is None:
    return ''
  return f'{value:.4g}' if isinstance(value, float) else str(value)


def write_csv(path: pathlib.Path, rows: list[dict[str, Any]], spec: Spec) -> None:
  keys, metrics = _columns(rows, spec)
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(['point', 'status', *keys, *metrics, f'best_{spec.metric}', 'best_step',
                   'wall_s', 'error'])
  for r in rows:
    writer.writerow([r['name'], r['status'], *[r['overrides'].get(k, '') for k in keys],
                     *[r['final'].get(m, '') for m in metrics], _none(r['best']),
                     _none(r['best_step']), round(r['wall_s'], 1), r['error']])
  write_atomic(path, out.getvalue())


def _none(value: Any) -> Any:
  return '' if value is None else value


def write_markdown(path: pathlib.Path, rows: list[dict[str, Any]], spec: Spec, title: str) -> None:
  keys, metrics = _columns(rows, spec)
  statuses = [r['status'] for r in rows]
  counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
  lines = [f'# {title}', '',
           f'Swept metric: `{spec.metric}` ({spec.mode}): final values, and the best value an '
           f'eval reached, with its step. {len(rows)} points: '
           + ', '.join(f'{n} {s}' for s, n in counts.items()) + '.', '']
  ordered = _order(rows, spec)
  if ordered and spec.metric in ordered[0]['final']:
    best = ordered[0]
    lines += [f'Best: `{best["name"]}`, {spec.metric} = {_fmt(best["final"][spec.metric])}.', '']
  header = ['point', 'status', *keys, *metrics, f'best {spec.metric} (step)', 'wall time', 'error']
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in ordered:
    best = f'{_fmt(r["best"])} ({r["best_step"]})' if r['best'] is not None else ''
    cells = [f'`{r["name"]}`', r['status'], *[_fmt(r['overrides'].get(k)) for k in keys],
             *[_fmt(r['final'].get(m)) for m in metrics], best, f'{r["wall_s"]:.0f} s',
             r['error'].replace('|', '\\|')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  write_atomic(path, '\n'.join(lines) + '\n')


def plot(path: pathlib.Path, rows: list[dict[str, Any]], spec: Spec, title: str) -> None:
  import matplotlib
  matplotlib.use('Agg')  # Files only; no display needed.
  import matplotlib.pyplot as plt

  ordered = [r for r in _order(rows, spec) if r['curve']]
  fig, (curves, finals) = plt.subplots(1, 2, figsize=(12, 4.5))
  for i, r in enumerate(ordered):
    steps, values = zip(*r['curve'])
    curves.plot(steps, values, marker='o', markersize=3, color=f'C{i % 10}', label=r['name'])
  curves.set(title=f'{spec.metric} at each eval', xlabel='step', ylabel=spec.metric)
  scored = [r for r in ordered if r['status'] == 'done' and spec.metric in r['final']]
  finals.barh(range(len(scored)), [r['final'][spec.metric] for r in scored],
              color=[f'C{ordered.index(r) % 10}' for r in scored])
  finals.set_yticks(range(len(scored)), [r['name'] for r in scored], fontsize=7)
  finals.invert_yaxis()  # Best on top.
  finals.set(title=f'final {spec.metric} ({spec.mode} is better)', xlabel=spec.metric)
  if not ordered:
    curves.text(0.5, 0.5, 'no eval values yet', ha='center', transform=curves.transAxes)
  elif len(ordered) <= 12:
    curves.legend(fontsize=7)
  for ax in (curves, finals):
    ax.grid(alpha=0.3)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp.png')  # Workers write at once.
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  tmp.replace(path)


class Summary:
  """Writes the summary files of a sweep's workdir; the plot (seconds of matplotlib) at most once
  a minute until the last write."""

  def __init__(self, workdir: pathlib.Path, spec: Spec, title: str, plot_every_s: float = 60.0):
    self._workdir, self._spec, self._title = workdir, spec, redact(title)
    self._plot_every_s, self._plotted = plot_every_s, time.monotonic()

  def write(self, rows: list[dict[str, Any]], last: bool = False) -> None:
    self._workdir.mkdir(parents=True, exist_ok=True)
    write_csv(self._workdir / 'summary.csv', rows, self._spec)
    write_markdown(self._workdir / 'summary.md', rows, self._spec, self._title)
    if last or time.monotonic() - self._plotted >= self._plot_every_s:
      plot(self._workdir / 'summary.png', rows, self._spec, self._title)
      self._plotted = time.monotonic()
