"""What the PyTorch twins (scripts/torch_twins.py, torch_twins_generative.py) share: image
shapes and batches, JAX's 'SAME' padding, trainable parameters, the EMA of the weights, frozen
batch statistics."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# Image side and channels of the image datasets (the twins are built before any data is seen).
IMAGE_SHAPES = {'mnist': (28, 1), 'fashion_mnist': (28, 1), 'cifar10': (32, 3)}


def image_shape(config) -> tuple[int, int]:
  name = config.dataset.name
  if name not in IMAGE_SHAPES:
    raise ValueError(f'the PyTorch twins know the image datasets {", ".join(IMAGE_SHAPES)}, '
                     f'not {name!r}')
  return IMAGE_SHAPES[name]


def images(batch, channels_last: bool = False) -> torch.Tensor:
  """The batch's float images [B, H, W, C] as a torch [B, C, H, W] tensor."""
  x = torch.from_numpy(np.ascontiguousarray(batch['image'].transpose(0, 3, 1, 2)))
  return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow/flax 'SAME' (models/layers.same_padding): the odd pixel of padding goes after."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
  """nn.Conv2d with flax's padding='SAME': symmetric padding where that is the same, else an
  explicit pad (e.g. a 3x3/2 conv on 28x28 pads 0 before and 1 after)."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
               bias: bool = True):
    super().__init__(cin, cout, kernel, stride, 0, groups=groups, bias=bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    (top, bottom), (left, right) = (same_padding(n, k, s) for n, k, s in
                                    zip(x.shape[-2:], self.kernel_size, self.stride))
    if top == bottom and left == right:
      return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0,
                    1, self.groups)


def trainable(module: nn.Module) -> list[nn.Parameter]:
  return [p for p in module.parameters() if p.requires_grad]


def num_trainable(module: nn.Module) -> int:
  return sum(p.numel() for p in trainable(module))


class EMA:
  """ema <- d ema + (1 - d) params after every update, d = min(decay, (1 + t) / (10 + t)) at the
  update's 0-based step t: train/state.ema_update."""

  def __init__(self, params, decay: float):
    self.params, self.decay, self.step = list(params), decay, 0
    self.ema = [p.detach().clone() for p in self.params]

  @torch.no_grad()
  def update(self) -> None:
    d = min(self.decay, (1 + self.step) / (10 + self.step))
    torch._foreach_lerp_(self.ema, self.params, 1 - d)
    self.step += 1


@contextlib.contextmanager
def frozen_batch_stats(module: nn.Module):
  """BatchNorm in training mode (batch statistics) that leaves its running averages as they are:
  the JAX objectives drop the model state of such a pass (momentum 0: running = running)."""
  norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
  saved = [m.momentum for m in norms]
  for m in norms:
    m.momentum = 0.0
  try:
    yield
  finally:
    for m, momentum in zip(norms, saved):
      m.momentum = momentum
