"""Model registry: every architecture family is one module, found by `config.model.name`."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from dl10_jax.errors import ConfigError
from dl10_jax.models import (attention_classifier, cnn, gan, gpt, mobilenet, recurrent, resnet,
                             transformer, unet)
from dl10_jax.models import quality_net

MODELS: dict[str, type[nn.Module]] = {
    'cnn': cnn.CNN,
    'gpt': gpt.GPT,
    'recurrent_lm': recurrent.RecurrentLM,
    'recurrent_classifier': recurrent.RecurrentClassifier,
    'transformer_classifier': transformer.TransformerClassifier,
    'encoder_decoder': transformer.EncoderDecoder,
    'attention_classifier': attention_classifier.AttentionClassifier,
    'resnet': resnet.ResNet,
    'mobilenet_v1': mobilenet.MobileNetV1,
    'mobilenet_v2': mobilenet.MobileNetV2,
    'shufflenet_v2': mobilenet.ShuffleNetV2,
    'unet': unet.UNet,
    'dcgan': gan.DCGAN,
    'quality_net': quality_net.QualityNet,
}


def build(config: ml_collections.ConfigDict, dtype: Any = jnp.float32) -> nn.Module:
  """Instantiates `config.name` with the other fields of `config` as constructor arguments."""
  if config.name not in MODELS:
    raise ConfigError(f'model.name={config.name!r} is unknown; allowed: {", ".join(MODELS)}')
  cls = MODELS[config.name]
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name', 'dtype'}  # dtype: config.dtype
  kwargs = {k: v for k, v in config.to_dict().items() if k != 'name'}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ConfigError(f'model.{unknown[0]} is not a field of {config.name}; allowed: '
                      f'{", ".join(sorted(fields))}')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return cls(**kwargs, dtype=dtype)
