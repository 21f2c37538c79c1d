"""Weights & Biases beside metrics.jsonl and TensorBoard, when `config.wandb.project` is set.

Optional: wandb is imported only for a run that turns it on. The run id is kept in
WORKDIR/wandb_run_id, so that a resumed training run continues the same W&B run and its curves.
The API key is wandb's business ($WANDB_API_KEY or `wandb login`): nothing here reads or logs it.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Mapping

import numpy as np
from etils import epath

from dl10_jax.config_lib import WANDB_INSTALL
from dl10_jax.errors import UserError

RUN_ID_FILE = 'wandb_run_id'


def import_wandb() -> Any:
  try:
    import wandb
  except ImportError:
    raise UserError(f'wandb.project is set but wandb is not installed: {WANDB_INSTALL} (or leave '
                    'wandb.project empty)') from None
  return wandb


def flat_config(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'model.name': 'cnn', ...}: W&B's run table filters and groups by flat keys."""
  out = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      out.update(flat_config(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _run_id(workdir: epath.Path) -> str:
  """The W&B run id of this workdir, created by its first run."""
  path = workdir / RUN_ID_FILE
  if path.exists():
    return path.read_text().strip()
  run_id = uuid.uuid4().hex[:12]  # Letters and digits, as W&B run ids need.
  path.write_text(run_id + '\n')
  return run_id


class WandbWriter:
  """One W&B run per workdir; the step of each event is the training step."""

  def __init__(self, workdir: epath.Path, config: Mapping[str, Any]):
    self._wandb = wandb = import_wandb()
    w = config['wandb']
    local = '://' not in str(workdir)  # W&B's files: WORKDIR/wandb (local disks), or $WANDB_DIR.
    try:
      self._run = wandb.init(
          project=w['project'], entity=w['entity'] or None, name=w['name'] or None,
          tags=[t.strip() for t in w['tags'].split(',') if t.strip()] or None,
          mode=w['mode'] or None, id=_run_id(workdir), resume='allow',
          config=flat_config(config),
          dir=os.environ.get('WANDB_DIR') or (str(workdir) if local else None))
    except wandb.Error as e:
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise UserError(f'wandb could not start its run: {first} (set $WANDB_API_KEY or run '
                      '`wandb login`, or --config.wandb.mode=offline)') from None

  def write(self, step: int, values: dict[str, float]) -> None:
    # A resumed run logs again the steps after its checkpoint; W&B already has them (online) and
    # rejects steps below its last one.
    if step >= self._run.step:
      self._run.log(values, step=step)

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    if step >= self._run.step:
      self._run.log({name: self._wandb.Image(np.asarray(image))}, step=step)

  def close(self) -> None:
    self._run.finish()
