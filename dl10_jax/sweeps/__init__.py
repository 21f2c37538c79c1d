"""Hyperparameter sweeps (`python -m dl10_jax.sweep`): what a config imports to define one.

A config file may define, next to `get_config`:

  get_sweep() -> list of override dicts      # a grid, e.g. sweeps.product(learning_rate=[...])
  get_search(trial) -> override dict         # an Optuna search space, define-by-run
  SWEEP_METRIC = 'eval_accuracy'             # what a sweep compares (default eval_loss) ...
  SWEEP_MODE = 'max'                         # ... and which way is better (default min)

The modules: `points` (grids, names, override arguments), `runner` (one point as a subprocess of
dl10_jax.main, its markers, the grid loop), `report` (summary.csv / .md / .png), `search` (Optuna).
"""

from __future__ import annotations

from dl10_jax.sweeps.points import product, zip_

__all__ = ['product', 'zip_']
