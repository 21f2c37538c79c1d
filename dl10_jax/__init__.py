"""dl10_jax: ten core deep-learning architectures in JAX/Flax, one training loop for all."""

from dl10_jax import runtime as _runtime

_runtime.set_default_xla_flags()  # Before JAX creates a backend: XLA reads XLA_FLAGS only then.
