"""Pallas kernels (flash attention, the fused LSTM), each beside the plain-JAX `reference_*` it
is tested against; leaves: they import no model, data or training code."""
