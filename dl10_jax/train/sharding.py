"""The device mesh and how arrays are laid out on it.

Data parallelism over every device: the batch is split along the mesh's `data` axis, parameters and
optimizer state are replicated. Meshes with more named axes (FSDP, tensor parallel) come from the
same `config.mesh` dict.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dl10_jax.errors import ConfigError


def make_mesh(config: ml_collections.ConfigDict, devices: list[Any] | None = None) -> Mesh:
  """A mesh with one axis per `config` entry (name -> size; one size may be -1 for 'the rest')."""
  devices = list(devices or jax.devices())
  names, sizes = list(config.keys()), list(config.values())
  if 'data' not in names:
    raise ConfigError(f'mesh={dict(config)} has no `data` axis; every mesh needs one')
  if sizes.count(-1) > 1:
    raise ConfigError(f'mesh={dict(config)} has more than one -1 axis; at most one may be -1')
  fixed = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % fixed:
    raise ConfigError(f'mesh={dict(config)} does not fit {len(devices)} devices; use positive '
                      f'sizes whose product divides {len(devices)} (and -1 for the rest)')
  sizes = [len(devices) // fixed if s == -1 else s for s in sizes]
  used = math.prod(sizes)
  return Mesh(np.asarray(devices[:used]).reshape(sizes), names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the `data` axis."""
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (parameters, optimizer state, metrics)."""
  return NamedSharding(mesh, P())


def to_global(batch: Any, mesh: Mesh) -> Any:
  """This process's slice of the batch -> global arrays sharded over the `data` axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
