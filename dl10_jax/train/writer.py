"""Where metrics go: `WORKDIR/metrics.jsonl` (one JSON object per event) and TensorBoard files.

tensorboardX writes event files without TensorFlow. Only process 0 writes.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
import tensorboardX


class MetricWriter:
  """Appends each event to metrics.jsonl (flushed at once: a killed run keeps its log) and TB."""

  def __init__(self, workdir: str | pathlib.Path):
    self._enabled = jax.process_index() == 0
    if self._enabled:
      workdir = pathlib.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(workdir / 'metrics.jsonl', 'a', encoding='utf-8')
      self._tb = tensorboardX.SummaryWriter(str(workdir / 'tensorboard'))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self._enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({'step': int(step), **values}) + '\n')
    self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tb.close()
