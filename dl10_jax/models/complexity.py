"""Model size and cost: parameters, and multiply-accumulates (MACs) per example of the forward pass.

Two ways to count, kept apart so that each checks the other (tests/test_complexity.py):
- `count_macs`: an analytic walk. `nn.intercept_methods` sees every `Conv2D`, `nn.Conv`,
  `nn.Dense` and `nn.DenseGeneral` call with its input and output shapes, under `jax.eval_shape`,
  so nothing is allocated. This is the number papers quote (MobileNet's "mult-adds").
- `xla_flops`: XLA's cost analysis of the compiled eval forward pass. It also counts BatchNorm,
  activations and residual adds, and skips the kernel taps that fall on a conv's zero padding
  (`count_macs(..., padding_taps=False)` does too), so whole models agree to within 10 %.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl10_jax.errors import ConfigError
from dl10_jax.models.layers import Conv2D, same_padding


def count_params(variables: Any) -> int:
  """Scalars in the 'params' collection of `model.init`'s variables (not BatchNorm statistics)."""
  if 'params' not in variables:
    raise ConfigError("count_params needs the variables of model.init (a 'params' collection); "
                      f'got keys {", ".join(map(str, variables)) or "none"}')
  return sum(math.prod(x.shape) for x in jax.tree.leaves(variables['params']))


def _valid_taps(size: int, kernel: int, stride: int, padding: str) -> int:
  """Kernel taps summed over one dimension's outputs, leaving out those on zero padding."""
  before = {'SAME': same_padding(size, kernel, stride)[0], 'HALF': kernel // 2}.get(padding, 0)
  outputs = (-(-size // stride) if padding == 'SAME'
             else (size + 2 * before - kernel) // stride + 1)
  return sum(min(kernel, size + before - o * stride) - max(0, before - o * stride)
             for o in range(outputs))


def _layer_macs(module: nn.Module, x: Any, y: Any, padding_taps: bool) -> int | None:
  """MACs of one call of a layer the walk counts (batch of 1); None for every other module."""
  if isinstance(module, (Conv2D, nn.Conv)):
    kernel = module.kernel_size
    kernel = (kernel,) if isinstance(kernel, int) else tuple(kernel)  # nn.Conv: an int is 1-D.
    per_tap = x.shape[-1] // module.feature_group_count * y.shape[-1]
    if padding_taps:
      return math.prod(y.shape[:-1]) * math.prod(kernel) * per_tap
    strides = module.strides or 1
    strides = (strides,) * len(kernel) if isinstance(strides, int) else tuple(strides)
    padding = module.padding.upper() if isinstance(module.padding, str) else module.padding
    dilations = [getattr(module, name, None) or 1 for name in ('kernel_dilation', 'input_dilation')]
    dilated = any(set((d,) if isinstance(d, int) else d) != {1} for d in dilations)
    if padding not in ('SAME', 'VALID', 'HALF') or dilated:
      raise ConfigError(f'padding_taps=False counts SAME, VALID or HALF undilated convs only; '
                        f'{module.name or type(module).__name__} has padding={module.padding!r}'
                        f'{" and dilation" if dilated else ""}')
    taps = math.prod(_valid_taps(n, k, s, padding)
                     for n, k, s in zip(x.shape[-1 - len(kernel):-1], kernel, strides))
    return math.prod(y.shape[:-1 - len(kernel)]) * taps * per_tap
  if isinstance(module, nn.Dense):
    return math.prod(y.shape) * x.shape[-1]
  if isinstance(module, nn.DenseGeneral):
    axes = (module.axis,) if isinstance(module.axis, int) else module.axis
    return math.prod(y.shape) * math.prod(x.shape[a] for a in axes)
  return None


def _example(input_shape: tuple[int, ...], input_dtype: Any = jnp.float32) -> jax.ShapeDtypeStruct:
  if not input_shape or any(int(d) <= 0 for d in input_shape):
    raise ConfigError(f'input_shape={tuple(input_shape)} must be the positive dimensions of one '
                      'example, without the batch (28,28,1 for Fashion-MNIST)')
  return jax.ShapeDtypeStruct((1, *map(int, input_shape)), jnp.dtype(input_dtype))


def _eval_kwargs(model: nn.Module) -> dict[str, bool]:
  """train=False for models that take it; a bare layer (Conv2D) does not."""
  return {'train': False} if 'train' in inspect.signature(type(model).__call__).parameters else {}


def abstract_variables(model: nn.Module, input_shape: tuple[int, ...],
                       input_dtype: Any = jnp.float32) -> Any:
  """The shapes of `model.init`'s variables for one example of `input_shape`; nothing allocated."""
  init = functools.partial(model.init, **_eval_kwargs(model))
  return jax.eval_shape(init, jax.random.key(0), _example(input_shape, input_dtype))


def count_macs(model: nn.Module, input_shape: tuple[int, ...], input_dtype: Any = jnp.float32,
               padding_taps: bool = True) -> int:
  """Multiply-accumulates of one example's eval forward pass (train=False), by an analytic walk.

  Each conv adds output elements * kh * kw * Cin / groups, each dense output elements * in
  features: the papers' count. `padding_taps=False` leaves out the taps on a conv's zero padding,
  as XLA's cost analysis does (a 3x3 SAME conv on 7x7 is then 18 % cheaper). Not counted:
  attention and recurrent matmuls, embedding lookups, and elementwise work (BatchNorm,
  activations, pooling, adds). `input_shape` is one example's, e.g. (28, 28, 1); token models
  take input_dtype=jnp.int32.
  """
  macs = []

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      layer = _layer_macs(context.module, args[0], y, padding_taps)
      if layer is not None:
        macs.append(layer)
    return y

  with nn.intercept_methods(interceptor):  # init runs the forward pass once, abstractly.
    abstract_variables(model, input_shape, input_dtype)
  return sum(macs)


def xla_flops(model: nn.Module, input_shape: tuple[int, ...],
              input_dtype: Any = jnp.float32) -> float:
  """FLOPs per example of the compiled eval forward pass, from XLA's cost analysis.

  Models with a `conv_impl` run XLA's convolution here: the CPU im2col path would be counted as
  slicing and matmuls, and its depthwise path as elementwise products.
  """
  if isinstance(model, Conv2D):
    model = model.clone(impl='xla')
  elif hasattr(model, 'conv_impl'):
    model = model.clone(conv_impl='xla')
  variables = abstract_variables(model, input_shape, input_dtype)
  apply = jax.jit(functools.partial(model.apply, **_eval_kwargs(model)))
  cost = apply.lower(variables, _example(input_shape, input_dtype)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # A list of dicts in older jax.
  return float(cost.get('flops', 0.0))  # No key when there is nothing to compute.
