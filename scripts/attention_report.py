"""Soft vs hard attention, side by side: the results table, the gradient noise, where each attends.

  python scripts/attention_report.py runs/attention_{soft,reinforce,gumbel,topk} \
      --out experiments/attention

For each trained run of configs/attention.py it prints one markdown row: final test accuracy, the
first evaluated step at >= 80 %, wall time (config.json written -> last metric), and the variance
of the gradient estimate of the attention's parameters (the query and the attention module, not
REINFORCE's baseline), as
E||g - mean g||^2 / ||mean g||^2 over 32 gradients:
  - estimator noise: one fixed training batch, 32 draws of the selection's randomness (zero for
    the deterministic soft and straight-through top-k);
  - with minibatch noise: 32 different batches, one draw each.
Both are measured at initialization and at the trained parameters. It writes `overlays.png` (a
row per run, the same test images: the eval-mode weights over the 15x15 grid, each location
drawn over the 4x4 pixels of its stride) and adds each run's row to its TensorBoard as an image.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorboardX  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dl10_jax.train import sharding  # noqa: E402
from dl10_jax.train.experiment import restore_run  # noqa: E402

CLASSES = ('T-shirt', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
           'Boot')
DRAWS = 32
ATTENTION_PARAMS = ('query', 'attention')


def relative_variance(grads: list[np.ndarray]) -> float:
  """E||g - mean g||^2 / ||mean g||^2 of flattened gradients."""
  g = np.stack(grads)
  mean = g.mean(axis=0)
  return float(((g - mean) ** 2).sum(axis=1).mean() / max((mean ** 2).sum(), 1e-30))


def gradient_noise(exp, state, batches) -> tuple[float, float]:
  """(estimator noise on batches[0], estimator + minibatch noise over all batches)."""

  @jax.jit
  def grad(params, batch, rng):
    g = jax.grad(lambda p: exp.objective.loss(p, state, batch, rng)[0])(params)
    leaves = jax.tree_util.tree_leaves_with_path({k: g[k] for k in ATTENTION_PARAMS})
    # REINFORCE's baseline regression is not part of the selection's gradient.
    return jnp.concatenate([x.ravel() for path, x in leaves if 'baseline_net' not in str(path)])

  rngs = jax.random.split(jax.random.PRNGKey(1), DRAWS)
  same = [np.asarray(grad(state.params, batches[0], r)) for r in rngs]
  different = [np.asarray(grad(state.params, b, r)) for b, r in zip(batches, rngs)]
  return relative_variance(same), relative_variance(different)


def attention_maps(exp, state, images) -> tuple[np.ndarray, np.ndarray]:
  """Eval-mode weights [N, h, w] over the grid and the predicted classes [N]."""
  variables = {'params': state.params, **state.model_state}
  logits, sown = exp.objective.model.apply(variables, images, train=False,
                                           mutable=['intermediates'])
  weights = np.asarray(sown['intermediates']['attention_weights'][0])  # [N, 1, 1, h*w]
  side = int(round(weights.shape[-1] ** 0.5))
  return weights.reshape(len(images), side, side), np.asarray(logits.argmax(-1))


def first_step_at(history: list[dict], key: str, level: float) -> int | None:
  return next((r['step'] for r in history if r.get(key, -1) >= level), None)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default='experiments/attention')
  parser.add_argument('--num_images', type=int, default=8)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  rows, panels = [], []
  for workdir in map(pathlib.Path, args.workdirs):
    exp, state = restore_run(workdir, jax.devices()[:1])
    kind = exp.config.model.attention
    history = [json.loads(line) for line in (workdir / 'metrics.jsonl').open()]
    evals = [r for r in history if 'eval_accuracy' in r]
    wall = (workdir / 'metrics.jsonl').stat().st_mtime - (workdir / 'config.json').stat().st_mtime

    train = exp.train_iterator()
    batches = [sharding.to_global(next(train), exp.mesh) for _ in range(DRAWS)]
    fresh = exp.init(jax.random.PRNGKey(exp.config.seed), batches[0])
    noise = gradient_noise(exp, fresh, batches) + gradient_noise(exp, state, batches)

    eval_batch = next(exp.eval_batches())
    images = jnp.asarray(eval_batch['image'][:args.num_images])
    maps, predicted = attention_maps(exp, state, images)
    panels.append((kind, np.asarray(images[..., 0]), maps, predicted,
                   np.asarray(eval_batch['label'][:args.num_images])))
    steps80 = first_step_at(evals, 'eval_accuracy', 0.8)
    rows.append(f'| {kind} | {exp.config.model.k if kind != "soft" else "all 225"} | '
                f'{evals[-1]["eval_accuracy"]:.2%} | {steps80 if steps80 else "never"} | '
                f'{wall / 60:.1f} min | ' +
                ' | '.join(f'{v:.3g}' if v > 1e-9 else '0' for v in noise) + ' |')
    print(rows[-1], flush=True)

  fig = plot_overlays(panels)
  fig.savefig(out / 'overlays.png', dpi=100, bbox_inches='tight')
  for workdir, panel in zip(args.workdirs, panels):
    with tensorboardX.SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard')) as tb:
      tb.add_figure('attention_overlays', plot_overlays([panel]), close=True)
  print('\n| attention | locations | test accuracy | first eval step >= 80 % | wall time | '
        'estimator noise (init) | + minibatch (init) | estimator noise (trained) | '
        '+ minibatch (trained) |\n|---|---|---|---|---|---|---|---|---|')
  print('\n'.join(rows))
  print(f'wrote {out / "overlays.png"}')


def plot_overlays(panels) -> plt.Figure:
  """One row per run: each test image with its attention weights over it."""
  n = len(panels[0][1])
  fig, axes = plt.subplots(len(panels), n, figsize=(1.6 * n, 1.9 * len(panels)), squeeze=False)
  for row, (kind, images, maps, predicted, labels) in zip(axes, panels):
    for i, ax in enumerate(row):
      canvas = images[i].shape[0]
      ax.imshow(images[i], cmap='gray', extent=(0, canvas, canvas, 0))
      ax.imshow(maps[i], cmap='inferno', alpha=0.55, extent=(0, canvas, canvas, 0),
                vmin=0, vmax=max(maps[i].max(), 1e-6), interpolation='nearest')
      ok = 'ok' if predicted[i] == labels[i] else f'true {CLASSES[labels[i]]}'
      ax.set_title(f'{CLASSES[predicted[i]]} ({ok})', fontsize=7)
      ax.set_xticks([])
      ax.set_yticks([])
    row[0].set_ylabel(kind, fontsize=9)
  fig.tight_layout()
  return fig


if __name__ == '__main__':
  main()
