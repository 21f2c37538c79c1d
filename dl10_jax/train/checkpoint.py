"""Checkpoints with orbax: the train state and the data iterator's position, saved together.

orbax writes each step to a temporary directory and renames it when complete (on gs://, marks it
complete), so a run killed mid-save leaves the previous checkpoint intact; restoring picks the
newest complete step, and skips one that does not read back (a corrupt file) for the one before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from dl10_jax.errors import ConfigError, UserError
from dl10_jax.models import hf_gpt2
from dl10_jax.train.sharding import path_name


def resolve_path(path: str | os.PathLike) -> epath.Path:
  """A workdir as a path on any file system epath knows (local, gs://): local ones made
  absolute, which orbax requires, remote ones as given."""
  return epath.Path(path) if '://' in str(path) else epath.Path(path).absolute()


class Checkpointer:
  """WORKDIR/checkpoints: the newest `keep` steps, each with the state and the data position."""

  def __init__(self, workdir: str | os.PathLike, keep: int):
    directory = resolve_path(workdir) / 'checkpoints'
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler()})
    self._damaged: set[int] = set()  # Steps that did not restore.
    self._failed = False  # A save failed: closing must not wait for it again.

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
    """Starts an asynchronous save; arrays are copied off the device before this returns.

    The previous save finishes first: a full disk there ends the run with a DiskFull.
    """
    with self._disk_full_is_one_line():
      if step in self._damaged:  # Skipped by restore_latest: this save supersedes it.
        self._manager.delete(step)
        self._damaged.discard(step)
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def mismatch(self, step: int, abstract_state: Any) -> str | None:
    """The first array whose saved shape differs from `abstract_state`'s, or None if all fit."""
    try:
      saved = self._manager.item_metadata(step)['state']
    except (KeyError, ValueError, FileNotFoundError):
      saved = None
    if saved is None:
      return 'it holds no train state; is it a dl10_jax checkpoint directory?'
    flat_saved = {path_name(p): getattr(x, 'shape', None)
                  for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
    for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
      key = path_name(p)
      if key not in flat_saved:
        return f'{key} is not in the checkpoint'
      if tuple(flat_saved[key]) != tuple(x.shape):
        return f'{key} has shape {tuple(flat_saved[key])} there but {tuple(x.shape)} here'
    return None

  def restore_latest(self, abstract_state: Any,
                     check: Callable[[int], None] = lambda step: None
                     ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, data state) of the newest step that restores, or None if there is none.

    `check(step)` runs first and may raise (a checkpoint of another config). A step that then
    fails to read is skipped with a warning; it is replaced only when the run saves that step
    again (a read error that passes, a network one, loses nothing).
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        readable = self._manager.item_metadata(step)['state'] is not None
      except Exception:  # noqa: BLE001 - Whatever a damaged file raises.
        readable = False
      if readable:
        check(step)
      try:
        if not readable:
          raise ValueError('its metadata does not read back')
        return step, *self.restore(step, abstract_state)
      except Exception as e:  # noqa: BLE001
        message = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        logging.warning('the checkpoint of step %d in %s does not restore (%s: %s); trying the '
                        'one before', step, self._manager.directory, type(e).__name__, message)
        self._damaged.add(step)
    if self._damaged:  # Starting afresh would bury them: the user decides.
      raise CheckpointUnreadable(
          f'none of the checkpoints in {self._manager.directory} restores (steps '
          f'{sorted(self._damaged)}; see the warnings above); move that directory away to train '
          'afresh')
    return None

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores into the shapes, dtypes and shardings of `abstract_state`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored.state, restored.data

  def close(self) -> None:
    """Waits for the save in flight (once a save has failed, only closes)."""
    try:
      if not self._failed:
        with self._disk_full_is_one_line():
          self._manager.wait_until_finished()
    finally:
      self._manager.close()

  @contextlib.contextmanager
  def _disk_full_is_one_line(self) -> Iterator[None]:
    """orbax reports a full disk as whatever tensorstore or the OS raised, mostly in a background
    thread and at the next save: one line naming the checkpoint that is still whole instead."""
    try:
      yield
    except Exception as e:
      if not _is_disk_full(e):
        raise
      self._failed = True
      try:
        with contextlib.suppress(Exception):  # A save still in flight may complete.
          self._manager.wait_until_finished()
        self._manager.reload()
        usable = self._manager.latest_step()
      except Exception:  # noqa: BLE001 - The message matters more than the step.
        usable = None
      kept = (f'the checkpoint of step {usable} is still usable' if usable is not None else
              'no checkpoint was completed')
      raise DiskFull(f'no space left on device while saving a checkpoint in '
                     f'{self._manager.directory}; {kept}: free space and rerun to resume') from e


class CheckpointUnreadable(UserError):
  """Every saved step failed to restore."""


class DiskFull(UserError):
  """A save ran out of space; the newest complete checkpoint is intact."""


def _is_disk_full(error: BaseException | None) -> bool:
  """ENOSPC as an OSError, or in the text of tensorstore's error, anywhere in the chain."""
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or \
        'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _step_dir(path: epath.Path) -> epath.Path | None:
  """The newest step directory under a workdir, its checkpoints dir, or the step dir itself."""
  for candidate in (path / 'checkpoints', path):
    steps = [p for p in candidate.iterdir() if p.name.isdigit()] if candidate.is_dir() else []
    if steps:
      return max(steps, key=lambda p: int(p.name))
  return path if (path / 'state').is_dir() else None


def load_params(path: str | os.PathLike, fresh: Any, reinit: str = '',
                collection: str = 'params') -> Any:
  """`fresh` with every parameter replaced by the one saved in the run at `path`, or in the
  Hugging Face GPT-2 checkpoint of `hf:DIR` (models/hf_gpt2.py).

  Parameters whose path matches the regex `reinit` keep their fresh value (a new head). Any other
  missing or differently shaped parameter is an error naming it. `collection='model_state'` loads
  the model's other variables (BatchNorm running statistics) the same way.
  """
  hf_dir = hf_gpt2.directory(str(path))
  step_dir = _step_dir(resolve_path(path)) if hf_dir is None else hf_dir
  if step_dir is None:
    raise ConfigError(f'init_from={str(path)!r} holds no checkpoint; pass a workdir, its '
                      'checkpoints directory or one step directory of a trained run, or '
                      f'{hf_gpt2.PREFIX}DIR for a Hugging Face GPT-2 checkpoint')
  if not jax.tree.leaves(fresh):
    return fresh
  if hf_dir is not None:  # GPT-2 has parameters only: no other collection reaches here.
    flat_saved = hf_gpt2.read_params(hf_dir)
  else:
    saved = ocp.StandardCheckpointer().restore(step_dir / 'state')[collection]
    flat_saved = {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
  pattern = re.compile(reinit) if reinit else None

  def pick(key_path, x):
    key = path_name(key_path)
    if pattern and pattern.search(key):
      return x
    if key not in flat_saved:
      raise ConfigError(f'init_from: parameter {key} is not in {step_dir}; set init_reinit to a '
                        'regex matching the new parameters')
    if tuple(flat_saved[key].shape) != tuple(x.shape):
      raise ConfigError(f'init_from: parameter {key} has shape {tuple(flat_saved[key].shape)} in '
                        f'{step_dir} but {tuple(x.shape)} here; set init_reinit to re-initialise it')
    return jax.device_put(jnp.asarray(flat_saved[key], x.dtype), x.sharding)

  return jax.tree_util.tree_map_with_path(pick, fresh)
