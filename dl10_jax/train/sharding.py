"""The device mesh and how arrays are laid out on it: data parallel, FSDP and tensor parallel.

The mesh has three axes, sized by `config.mesh` (one may be -1, "the rest of the devices"):
  data    batches split over it; parameters replicated along it.
  fsdp    batches split over it too, and each large array of the train state (parameters,
          optimizer moments, EMA copies) split along its largest dimension that the axis divides
          (ZeRO-3 / fully sharded data parallel): XLA gathers a layer's weights when it needs them.
  tensor  Megatron-style tensor parallelism: attention heads and MLP hidden units split over it,
          by the rules of `TENSOR_RULES`; batches replicated along it.
The layout of every array follows from its path in the state and its shape, by the rules kept in
this one file, so models carry no sharding code and the trainer stays model-agnostic: a new model
gets FSDP for free, and tensor parallelism by naming its layers as GPT and the Transformer do
(`TENSOR_RULES`). A tensor axis over a model with none of those layers splits nothing: every device
along it computes the same, and `state_sharding` warns.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from dl10_jax.errors import ConfigError

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # The batch dimension is split over both.

# Arrays smaller than this stay replicated under FSDP: gathering them costs more than they weigh.
FSDP_MIN_SIZE = 1024

# Tensor parallelism (Megatron layout), matched against an array's path ('.../attn/qkv/kernel',
# also inside optimizer states) and applied only when the array has as many dimensions as the
# spec: the first projection of a pair splits its output (heads, hidden units), the second its
# input, so each device computes whole heads and the pair needs one all-reduce.
TENSOR_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    # GPT: fused qkv [W, 3, H, D] and bias [3, H, D]; output projection [H * D, W].
    (r'attn/qkv/kernel$', (None, None, 'tensor', None)),
    (r'attn/qkv/bias$', (None, 'tensor', None)),
    (r'attn/proj/kernel$', ('tensor', None)),
    # MultiHeadAttention (Transformer, encoder-decoder, attention classifiers): [W, H, D] -> heads.
    (r'/(query|key|value)/kernel$', (None, 'tensor', None)),
    (r'/(query|key|value)/bias$', ('tensor', None)),
    (r'/out/kernel$', ('tensor', None, None)),  # [H, D, W]
    # MLP of GPT and the Transformer: fc [W, 4W] splits hidden units, proj [4W, W] takes them.
    (r'mlp/fc/kernel$', (None, 'tensor')),
    (r'mlp/fc/bias$', ('tensor',)),
    (r'mlp/proj/kernel$', ('tensor', None)),
)


def path_name(key_path: tuple[Any, ...]) -> str:
  """'params/block0/attn/qkv/kernel' for a key path of attributes, dict keys or indices alike."""
  return '/'.join(str(getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k))))
                  for k in key_path)


def make_mesh(config: ml_collections.ConfigDict, devices: list[Any] | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh `config` sizes (an axis it omits has size 1)."""
  devices = list(devices or jax.devices())
  sizes = dict(config)
  unknown = sorted(set(sizes) - set(AXES))
  if unknown:
    raise ConfigError(f'mesh axis {unknown[0]!r} is unknown; allowed: {", ".join(AXES)}')
  sizes = [sizes.get(name, 1) for name in AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f'mesh={dict(config)} has more than one -1 axis; at most one may be -1')
  fixed = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % fixed:
    raise ConfigError(f'mesh={dict(config)} does not fit {len(devices)} devices; use positive '
                      f'sizes whose product divides {len(devices)} (and -1 for the rest)')
  sizes = [len(devices) // fixed if s == -1 else s for s in sizes]
  used = math.prod(sizes)
  if used != len(devices) and jax.process_count() > 1:
    raise ConfigError(f'mesh={dict(zip(AXES, sizes))} uses {used} of the {len(devices)} devices; '
                      'a multi-host mesh must use them all (set one axis to -1)')
  # make_mesh orders devices by the physical topology (TPU ICI); Auto axes: XLA's GSPMD
  # propagates the layouts chosen here through the model.
  return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                       devices=devices[:used])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the `data` and `fsdp` axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many ways a batch is split: the sizes of the batch axes."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (scalars, small arrays, metrics)."""
  return NamedSharding(mesh, P())


def tensor_rule(path: str, shape: tuple[int, ...]) -> tuple[str | None, ...] | None:
  """The `TENSOR_RULES` spec of the array at `path`, or None if tensor parallelism leaves it whole."""
  for pattern, rule in TENSOR_RULES:
    if len(rule) == len(shape) and re.search(pattern, path):
      return rule
  return None


def array_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Where one array of the train state lives: tensor rules first, then FSDP on the rest."""
  spec: list[str | None] = [None] * len(shape)
  rule = tensor_rule(path, shape) if mesh.shape['tensor'] > 1 else None
  for dim, axis in enumerate(rule or ()):
    if axis and shape[dim] % mesh.shape[axis]:
      raise ConfigError(
          f'mesh.{axis}={mesh.shape[axis]} does not divide dimension {dim} (size '
          f'{shape[dim]}) of {path} {tuple(shape)}: its heads or hidden units; use a '
          f'{axis} size that divides {shape[dim]}')
    spec[dim] = axis
  n = mesh.shape['fsdp']
  if n > 1 and math.prod(shape) >= FSDP_MIN_SIZE:
    free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % n == 0]
    if free:  # The largest divisible dimension; ties go to the later (output) one.
      spec[max(free, key=lambda d: (shape[d], d))] = 'fsdp'
  return P(*spec)


def unsplit_tensor_axis(shapes: Any, mesh: Mesh) -> str | None:
  """A warning if the mesh has a tensor axis but no array of `shapes` matches a tensor rule."""
  n = mesh.shape['tensor']
  leaves = jax.tree_util.tree_leaves_with_path(shapes)
  if n == 1 or any(tensor_rule(path_name(p), tuple(x.shape)) for p, x in leaves):
    return None
  return (f'mesh.tensor={n} splits nothing: tensor parallelism applies only to layers named as '
          'TENSOR_RULES (train/sharding.py) says (qkv, proj, fc; query, key, value, out) and this '
          f'model has none, so all {n} devices along it compute the same; use mesh.tensor=1')


def state_sharding(shapes: Any, mesh: Mesh) -> Any:
  """A NamedSharding for every leaf of an (abstract) train state, by `array_spec`."""
  warning = unsplit_tensor_axis(shapes, mesh)
  if warning:
    logging.warning('%s', warning)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: NamedSharding(mesh, array_spec(path_name(p), tuple(x.shape), mesh)), shapes)


def to_global(batch: Any, mesh: Mesh) -> Any:
  """This process's slice of the batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
