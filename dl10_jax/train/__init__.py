"""Training: one shared loop (`trainer`) and a small part per kind of objective."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import ml_collections

from dl10_jax.errors import ConfigError
from dl10_jax.train.classification import Classification
from dl10_jax.train.diffusion import Diffusion
from dl10_jax.train.gan import GAN
from dl10_jax.train.language_model import LanguageModel
from dl10_jax.train.objective import Objective
from dl10_jax.train.seq2seq import Seq2Seq

OBJECTIVES: dict[str, type[Objective]] = {
    'classification': Classification,
    'diffusion': Diffusion,
    'gan': GAN,
    'language_model': LanguageModel,
    'seq2seq': Seq2Seq,
}


def make_objective(config: ml_collections.ConfigDict, model: nn.Module,
                   splits: Any = None) -> Objective:
  """The objective named by `config.objective`, around `model`, for the data `splits`."""
  if config.objective not in OBJECTIVES:
    raise ConfigError(f'objective={config.objective!r} is unknown; allowed: '
                      f'{", ".join(OBJECTIVES)}')
  return OBJECTIVES[config.objective](config, model, splits)
