"""Draws the curves of one or more runs' metrics.jsonl to a PNG.

  python scripts/plot_metrics.py runs/cnn [runs/other ...] [--out curves.png]

One panel per metric family (loss, accuracy, throughput); every run is overlaid in its own colour,
train solid and eval dashed. Defaults to WORKDIR/metrics.png for a single run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # noqa: E402

PANELS = {  # Panel title -> metric name suffix that belongs in it.
    'loss': 'loss',
    'accuracy': 'accuracy',
    'examples / s': 'examples_per_sec',
}


def read_metrics(workdir: pathlib.Path) -> dict[str, tuple[list[int], list[float]]]:
  """{metric: (steps, values)}; a step logged twice (a resumed run) keeps its last value."""
  path = workdir / 'metrics.jsonl'
  if not path.is_file():
    raise SystemExit(f'error: {path} not found; pass the --workdir of a run')
  latest: dict[str, dict[int, float]] = {}
  for line in path.read_text().splitlines():
    try:
      event = json.loads(line)
    except json.JSONDecodeError:  # A line cut short when a run was killed.
      continue
    for key, value in event.items():
      if key != 'step':
        latest.setdefault(key, {})[event['step']] = value
  return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in latest.items()}


def plot(workdirs: list[pathlib.Path], out: pathlib.Path) -> None:
  runs = {str(w): read_metrics(w) for w in workdirs}
  panels = [(title, suffix) for title, suffix in PANELS.items()
            if any(k.endswith(suffix) for metrics in runs.values() for k in metrics)]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
  for ax, (title, suffix) in zip(axes[0], panels):
    for colour, (name, metrics) in enumerate(runs.items()):
      for key, (steps, values) in sorted(metrics.items()):
        if key.endswith(suffix):
          ax.plot(steps, values, color=f'C{colour}', linestyle='--' if 'eval' in key else '-',
                  marker='o' if 'eval' in key else None, markersize=3, label=f'{name}: {key}')
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  print(f'wrote {out}')


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+', type=pathlib.Path)
  parser.add_argument('--out', type=pathlib.Path, help='PNG path (default WORKDIR/metrics.png)')
  args = parser.parse_args(argv)
  out = args.out or (args.workdirs[0] / 'metrics.png' if len(args.workdirs) == 1
                     else pathlib.Path('metrics.png'))
  plot(args.workdirs, out)


if __name__ == '__main__':
  main(sys.argv[1:])
