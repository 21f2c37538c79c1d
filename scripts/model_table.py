"""Trained vision runs side by side: parameters, MACs, test accuracy, throughput; accuracy vs MACs.

  python scripts/model_table.py --runs cnn=runs/cnn,resnet20=runs/resnet20,\
mobilenet_v1=runs/mobilenet_v1,mobilenet_v2=runs/mobilenet_v2 \
      [--out experiments/lightweight/accuracy_vs_macs.png] [--input_shape 28,28,1] [--markdown]

Each run is the --workdir of a `dl10_jax.main` run. Its model is rebuilt from its config.json (whose
num_classes the trainer resolved) and counted without data or checkpoint: parameters and MACs per
example of the eval forward pass (dl10_jax/models/complexity.py; papers' count, padding taps
included). From its metrics.jsonl come the last eval_accuracy and the median of the logged
training examples_per_sec (the first log after a start, 0 while the clock is not running, is left
out). The input shape comes from the dataset name or --input_shape. Prints one row per run (a
markdown table with --markdown) and plots accuracy against MACs (log scale) to --out.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import matplotlib  # noqa: E402

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import ml_collections  # noqa: E402
import plot_metrics  # noqa: E402  (scripts/plot_metrics.py: its metrics.jsonl reader)

from dl10_jax import models  # noqa: E402
from dl10_jax.errors import ConfigError, UserError  # noqa: E402
from dl10_jax.models import complexity  # noqa: E402
from dl10_jax.train import experiment  # noqa: E402

# One example's shape per image dataset; others need --input_shape.
INPUT_SHAPES = {'fashion_mnist': (28, 28, 1), 'mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}
COLUMNS = ('model', 'params', 'MACs/example', 'test accuracy', 'train examples/s')


def parse_runs(text: str) -> dict[str, pathlib.Path]:
  """'label=workdir,...' -> {label: workdir}, in the order given."""
  runs = {}
  for item in filter(None, (s.strip() for s in text.split(','))):
    label, sep, workdir = item.partition('=')
    if not sep or not label or not workdir:
      raise ConfigError(f'--runs item {item!r} is not LABEL=WORKDIR')
    if label in runs:
      raise ConfigError(f'--runs names {label!r} twice')
    runs[label] = pathlib.Path(workdir)
  if not runs:
    raise ConfigError('--runs names no run; pass LABEL=WORKDIR,...')
  return runs


def parse_shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(d) for d in text.split(','))
  except ValueError:
    shape = ()
  if not shape or min(shape) <= 0:
    raise ConfigError(f'--input_shape={text!r} is not positive comma-separated integers (28,28,1)')
  return shape


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  if not workdir.is_dir():
    raise ConfigError(f'run directory {workdir} does not exist; pass the --workdir of a run of '
                      'dl10_jax.main')
  return experiment.run_config(workdir)


def run_metrics(workdir: pathlib.Path) -> tuple[float, float]:
  """(final eval_accuracy, median training examples_per_sec) of a run's metrics.jsonl."""
  if not (workdir / 'metrics.jsonl').is_file():
    raise ConfigError(f'{workdir} has no metrics.jsonl; train it first (dl10_jax.main)')
  metrics = plot_metrics.read_metrics(workdir)
  if not metrics.get('eval_accuracy', ((), ()))[1]:
    raise ConfigError(f'{workdir}/metrics.jsonl holds no eval_accuracy; the run has not been '
                      'evaluated yet')
  speeds = [v for v in metrics.get('examples_per_sec', ((), ()))[1] if v > 0]
  if not speeds:
    raise ConfigError(f'{workdir}/metrics.jsonl holds no training examples_per_sec')
  return metrics['eval_accuracy'][1][-1], statistics.median(speeds)


def describe(label: str, workdir: pathlib.Path, input_shape: tuple[int, ...] | None) -> dict:
  config = load_config(workdir)
  if config.model.get('num_classes', 0) == -1:
    raise ConfigError(f'{workdir}/config.json has model.num_classes=-1; the trainer writes the '
                      'resolved value, so this is not a config.json of dl10_jax.main')
  if input_shape is None:
    if config.dataset.name not in INPUT_SHAPES:
      raise ConfigError(f'no input shape known for dataset {config.dataset.name!r} ({workdir}); '
                        'pass --input_shape H,W,C')
    input_shape = INPUT_SHAPES[config.dataset.name]
  model = models.build(config.model)
  accuracy, speed = run_metrics(workdir)
  params = complexity.count_params(complexity.abstract_variables(model, input_shape))
  return {'model': label, 'params': params,
          'macs': complexity.count_macs(model, input_shape), 'accuracy': accuracy,
          'examples_per_sec': speed, 'dataset': config.dataset.name}


def table(rows: list[dict], markdown: bool) -> str:
  cells = [COLUMNS] + [(r['model'], f'{r["params"]:,}', f'{r["macs"] / 1e6:,.2f} M',
                        f'{r["accuracy"]:.2%}', f'{r["examples_per_sec"]:,.0f}') for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
  # The model column is left-aligned, the numbers right-aligned.
  lines = [[c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
           for row in cells]
  if not markdown:
    return '\n'.join('  '.join(line) for line in lines)
  rule = ['-' * widths[0]] + ['-' * (w - 1) + ':' for w in widths[1:]]
  return '\n'.join('| ' + ' | '.join(line) + ' |' for line in [lines[0], rule, *lines[1:]])


def plot(rows: list[dict], out: pathlib.Path) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, r in enumerate(rows):
    ax.scatter(r['macs'], 100 * r['accuracy'], color=f'C{i}', zorder=3)
    ax.annotate(f'{r["model"]} ({r["params"] / 1e6:.2f} M params)',
                (r['macs'], 100 * r['accuracy']), textcoords='offset points', xytext=(6, 4),
                fontsize=8)
  ax.set_xscale('log')
  millions = ticker.FuncFormatter(lambda v, _: f'{v / 1e6:g} M')
  ax.xaxis.set_major_formatter(millions)
  ax.xaxis.set_minor_formatter(  # Label 2, 3 and 5 of each decade; more would overlap.
      ticker.FuncFormatter(lambda v, _: f'{v / 1e6:g} M' if str(v)[0] in '235' else ''))
  ax.tick_params(axis='x', which='minor', labelsize=7)
  ax.set_xlabel('MACs per example (log scale)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(f'accuracy vs MACs ({", ".join(sorted({r["dataset"] for r in rows}))})')
  ax.grid(alpha=0.3, which='both')
  ax.margins(x=0.3, y=0.2)  # Room for the labels of the outermost points.
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', required=True, help='LABEL=WORKDIR,... (one row per run)')
  parser.add_argument('--out', type=pathlib.Path,
                      default=pathlib.Path('experiments/lightweight/accuracy_vs_macs.png'))
  parser.add_argument('--input_shape', help='H,W,C of one example (default: from the dataset)')
  parser.add_argument('--markdown', action='store_true', help='print a markdown table')
  args = parser.parse_args(argv)
  try:
    shape = parse_shape(args.input_shape) if args.input_shape else None
    rows = [describe(label, workdir, shape) for label, workdir in parse_runs(args.runs).items()]
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(table(rows, args.markdown))
  plot(rows, args.out)
  print(f'wrote {args.out}')
  return rows


if __name__ == '__main__':
  main(sys.argv[1:])
