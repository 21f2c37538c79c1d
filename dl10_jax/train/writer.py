"""Where metrics go: `WORKDIR/metrics.jsonl` (one JSON object per event), TensorBoard files and,
when the run's config turns it on, Weights & Biases (wandb_writer.py).

tensorboardX writes event files without TensorFlow, also to gs:// (with google-cloud-storage).
Only process 0 writes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import tensorboardX
from etils import epath

from dl10_jax.train import wandb_writer
from dl10_jax.train.checkpoint import resolve_path


class MetricWriter:
  """Appends each event to metrics.jsonl (flushed at once: a killed run keeps its log) and TB.

  Object stores (gs://) cannot append: there the whole log is rewritten at each event (it is
  small, and events come only at log and eval points).
  """

  def __init__(self, workdir: str | os.PathLike, append: bool | None = None):
    """`append`: None appends to local files and rewrites remote ones."""
    self._enabled = jax.process_index() == 0
    if self._enabled:
      workdir = resolve_path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._path = workdir / 'metrics.jsonl'
      self._rewrite = '://' in str(workdir) if append is None else not append
      if self._rewrite:
        self._lines = self._path.read_text().splitlines(True) if self._path.exists() else []
      else:
        self._jsonl = open(self._path, 'a', encoding='utf-8')
      self._tb = tensorboardX.SummaryWriter(str(workdir / 'tensorboard'))
      self._wandb = _wandb_writer(workdir)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self._enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    line = json.dumps({'step': int(step), **values}) + '\n'
    if self._rewrite:
      self._lines.append(line)
      self._path.write_text(''.join(self._lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(k, v, int(step))
    if self._wandb:
      self._wandb.write(int(step), values)

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """A [H, W, C] image in [0, 1] (a sample grid) to TensorBoard and W&B."""
    if self._enabled:
      self._tb.add_image(name, np.asarray(image), int(step), dataformats='HWC')
      if self._wandb:
        self._wandb.write_image(int(step), name, image)

  def close(self) -> None:
    if self._enabled:
      if not self._rewrite:
        self._jsonl.close()
      self._tb.close()
      if self._wandb:
        self._wandb.close()


def _wandb_writer(workdir: epath.Path) -> wandb_writer.WandbWriter | None:
  """W&B for a run whose config (config.json, as the trainer saved it: what W&B shows is exactly
  what the run used) names a wandb.project; None otherwise."""
  path = workdir / 'config.json'
  config = json.loads(path.read_text()) if path.exists() else {}
  if not config.get('wandb', {}).get('project') or config['wandb']['mode'] == 'disabled':
    return None
  return wandb_writer.WandbWriter(workdir, config)
