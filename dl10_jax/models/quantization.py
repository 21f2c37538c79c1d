"""Post-training int8 weight quantization: symmetric, one float32 scale per output channel.

Every parameter with ndim >= 2 (conv and dense kernels, embedding tables) is stored as int8 values
q = clip(round(w / scale), -127, 127) with scale = max|w| / 127 over all axes but the last (the
output channel, whose range can differ a lot from its neighbours'); biases and norm scales stay
float32. A weight that is exactly zero (pruned) stays exactly zero, and the error of any other is at
most scale / 2.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

QMAX = 127  # Symmetric: -128 is left out, so that -q is always representable.


@flax.struct.dataclass
class QuantizedArray:
  values: jax.Array  # int8, the weight's shape.
  scale: jax.Array  # float32 [1, ..., 1, channels]: one per index of the weight's last axis.

  def dequantize(self) -> jax.Array:
    return self.values.astype(jnp.float32) * self.scale


def _is_quantized(x: Any) -> bool:
  return isinstance(x, QuantizedArray)


def quantize_array(w: jax.Array) -> QuantizedArray:
  """Per-output-channel symmetric int8; an all-zero channel gets scale 0 and stays zero."""
  w = jnp.asarray(w, jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True) / QMAX
  q = jnp.round(w / jnp.where(scale > 0, scale, 1.0))
  return QuantizedArray(jnp.clip(q, -QMAX, QMAX).astype(jnp.int8), scale)


def quantize(params: Any) -> Any:
  """params with every ndim >= 2 array replaced by its QuantizedArray."""
  return jax.tree.map(lambda p: quantize_array(p) if jnp.ndim(p) >= 2 else p, params)


def dequantize(qparams: Any) -> Any:
  """The float32 params a quantized tree stands for."""
  return jax.tree.map(lambda x: x.dequantize() if _is_quantized(x) else x, qparams,
                      is_leaf=_is_quantized)


def model_bytes(params: Any) -> int:
  """Bytes of every array of a params tree, quantized (int8 values + float32 scales) or not."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def quantized_eval_step(eval_batch: Callable[[Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
  """`eval_batch(state, batch)` (an objective's) on int8 weights, jitted.

  The int8 arrays and their scales are the inputs of the compiled function, which dequantizes them
  on the fly inside it: what is read from memory is the int8 model. `state` carries everything else
  the eval step reads (model_state such as BatchNorm statistics); its params and opt_state are
  dropped before the call, so no float32 copy of the weights goes in.
  """
  @jax.jit
  def step(state: Any, qparams: Any, batch: Any) -> Any:
    return eval_batch(state.replace(params=dequantize(qparams)), batch)

  def call(state: Any, qparams: Any, batch: Any) -> Any:
    return step(state.replace(params=None, opt_state=None), qparams, batch)
  return call
