"""Pallas kernels, each beside a plain-JAX `reference_*` it is tested against (later issues)."""
