"""dl10_jax: ten core deep-learning architectures in JAX/Flax, one training loop for all."""
