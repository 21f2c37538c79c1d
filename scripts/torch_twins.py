"""PyTorch twins of the project's models, for scripts/benchmark.py (benchmark-only dependency).

Each twin is the *same* model (sizes, layers, loss, optimizer) as the JAX one its config builds,
with the same number of trainable parameters (tests/test_torch_twins.py):
`TWINS[config.model.name](config)` returns (module, loss_fn), loss_fn(batch) the training loss of
a batch of the project's own pipeline (numpy); `make_step(config)` adds the optimizer (and the EMA
of the weights where the objective keeps one) and returns (step(batch), number of parameters).
The GAN, two networks with two optimizers and losses, has its own step builder (`STEP_TWINS`);
it and the DDPM U-Net live in torch_twins_generative.py, the shared pieces in torch_twins_common.py.

Convolutions pad as the JAX models do: the ResNets and the lightweight CNNs k // 2 on each side
(PyTorch's own padding, the JAX `padding='HALF'`), the others 'SAME' (the odd pixel of padding
after, `torch_twins_common.SameConv2d`), so a strided layer sees the same windows.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # Its siblings, however it is loaded.
from torch_twins_common import (EMA, image_shape, images, num_trainable,  # noqa: E402,F401
                                trainable)
from torch_twins_generative import dcgan, dcgan_step, ddpm  # noqa: E402


# --- The CNN, language models, ResNet. ---


def _cnn(config):
  c1, c2 = config.model.conv_features
  model = nn.Sequential(
      nn.Conv2d(1, c1, 3), nn.ReLU(), nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(12 * 12 * c2, config.model.dense_features), nn.ReLU(),
      nn.Linear(config.model.dense_features, config.model.num_classes))

  def loss(batch):
    x = torch.from_numpy(np.ascontiguousarray(batch['image'].transpose(0, 3, 1, 2)))
    return F.cross_entropy(model(x), torch.from_numpy(batch['label']).long())
  return model, loss


class _RecurrentLM(nn.Module):
  """models/recurrent.RecurrentLM. Its cells have one bias (in the input Dense), torch's two:
  bias_hh stays 0 and frozen, so the trainable parameters are the same."""

  def __init__(self, m):
    super().__init__()
    cell = nn.LSTM if m.cell == 'lstm' else nn.RNN  # RNN: tanh, as the JAX Elman cell.
    self.embed = nn.Embedding(m.vocab_size, m.embed_dim)
    self.rnn = cell(m.embed_dim, m.hidden_size, num_layers=m.num_layers, batch_first=True,
                    dropout=m.dropout_rate if m.num_layers > 1 else 0.0)
    for name, p in self.rnn.named_parameters():
      if name.startswith('bias_hh'):
        p.requires_grad_(False)
        nn.init.zeros_(p)
    self.dropout = nn.Dropout(m.dropout_rate)
    self.tied = m.get('tie_embeddings', False)
    self.head = None if self.tied else nn.Linear(m.hidden_size, m.vocab_size)

  def forward(self, tokens):
    h = self.dropout(self.rnn(self.dropout(self.embed(tokens)))[0])
    return F.linear(h, self.embed.weight) if self.tied else self.head(h)


def _rotary(x: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
  """models/layers.rotary of x [B, H, T, D] at positions 0..T-1 (halves, not interleaved pairs)."""
  half = x.shape[-1] // 2
  freqs = base ** (-torch.arange(half, dtype=torch.float32) / half)
  angles = torch.arange(x.shape[-2], dtype=torch.float32)[:, None] * freqs[None, :]  # [T, D/2]
  cos, sin = angles.cos(), angles.sin()
  x1, x2 = x[..., :half], x[..., half:]
  return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class _Block(nn.Module):
  def __init__(self, width, heads, ratio, rotary, dropout):
    super().__init__()
    self.heads, self.rotary = heads, rotary
    self.ln1, self.ln2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)  # flax's
    self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
    self.fc, self.fc_proj = nn.Linear(width, ratio * width), nn.Linear(ratio * width, width)
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    b, t, w = x.shape
    q, k, v = self.qkv(self.ln1(x)).split(w, dim=2)
    q, k, v = (z.view(b, t, self.heads, w // self.heads).transpose(1, 2) for z in (q, k, v))
    if self.rotary:
      q, k = _rotary(q), _rotary(k)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, w)))
    return x + self.drop(self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate='tanh')))


class _GPT(nn.Module):
  """models/gpt.GPT: learned or rotary positions, pre-LN blocks, tied output projection."""

  def __init__(self, m):
    super().__init__()
    positions = m.get('positions', 'learned')
    if positions not in ('learned', 'rotary'):
      raise ValueError(f'model.positions={positions!r} has no PyTorch twin')
    dropout = m.get('dropout_rate', 0.0)
    self.wte = nn.Embedding(m.vocab_size, m.width)
    self.wpe = nn.Embedding(m.block_size, m.width) if positions == 'learned' else None
    self.drop = nn.Dropout(dropout)
    self.blocks = nn.ModuleList(_Block(m.width, m.num_heads, m.mlp_ratio, positions == 'rotary',
                                       dropout) for _ in range(m.num_layers))
    self.ln_f = nn.LayerNorm(m.width, eps=1e-6)

  def forward(self, tokens):
    x = self.wte(tokens)
    if self.wpe is not None:
      x = x + self.wpe(torch.arange(tokens.shape[1]))
    x = self.drop(x)
    for block in self.blocks:
      x = block(x)
    return F.linear(self.ln_f(x), self.wte.weight)  # Tied output projection.


def _language_model(module_cls):
  def build(config):
    model = module_cls(config.model)

    def loss(batch):
      tokens = torch.from_numpy(batch['tokens']).long()
      logits = model(tokens[:, :-1])
      return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    return model, loss
  return build


class _BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride, shortcut):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.stride, self.extra = stride, cout - cin
    self.project = None
    if (stride != 1 or cin != cout) and shortcut == 'projection':
      self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    if self.project is not None:
      x = self.project(x)
    elif self.stride != 1 or self.extra:  # Option A: strided identity, zero channels added.
      x = F.pad(x[:, :, ::self.stride, ::self.stride],
                (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
    return F.relu(y + x)


def _cifar_resnet(config):
  m = config.model
  if m.style != 'cifar':
    raise ValueError('the PyTorch twin covers CIFAR-style ResNets (model.style=cifar)')
  n, layers, cin = (m.depth - 2) // 6, [], 16
  for stage, width in enumerate((16, 32, 64)):
    for i in range(n):
      layers.append(_BasicBlock(cin, width, 2 if stage and not i else 1, m.shortcut))
      cin = width
  channels = 1 if config.dataset.name in ('fashion_mnist', 'mnist') else 3
  model = nn.Sequential(nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                        nn.ReLU(), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, m.num_classes))
  model = model.to(memory_format=torch.channels_last)

  def loss(batch):
    x = torch.from_numpy(np.ascontiguousarray(batch['image'].transpose(0, 3, 1, 2)))
    return F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)),
                           torch.from_numpy(batch['label']).long(),
                           label_smoothing=config.label_smoothing)
  return model, loss


# --- Lightweight CNNs: models/mobilenet.py. ---


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, depthwise: bool = False,
             activation: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
  """models/mobilenet.ConvBN: conv (no bias, k // 2 padding) + BatchNorm + activation (None:
  linear)."""
  layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=cin if depthwise else 1,
                      bias=False),
            nn.BatchNorm2d(cout)]  # PyTorch's defaults, as models/layers.batch_norm.
  return nn.Sequential(*layers, *([activation()] if activation else []))


class _Resize(nn.Module):
  """MobileNetV1's resolution multiplier rho: bilinear, antialiased when shrinking (jax.image)."""

  def __init__(self, factor: float):
    super().__init__()
    self.factor = factor

  def forward(self, x):
    size = [max(1, round(n * self.factor)) for n in x.shape[-2:]]
    return F.interpolate(x, size=size, mode='bilinear', antialias=True)


def _mobilenet_v1(m, channels: int) -> nn.Sequential:
  from dl10_jax.models.mobilenet import V1_BLOCKS
  width = lambda c: max(1, int(c * m.get('width_multiplier', 1.0)))  # Keras' rounding.
  rho = m.get('resolution_multiplier', 1.0)
  layers = [_Resize(rho)] if rho != 1.0 else []
  cin = width(32)
  layers.append(_conv_bn(channels, cin, 3, 1 if m.get('small_input', True) else 2))
  for features, stride in V1_BLOCKS:  # Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU.
    layers += [_conv_bn(cin, cin, 3, stride, depthwise=True), _conv_bn(cin, width(features))]
    cin = width(features)
  return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(cin, m.num_classes))


class _InvertedResidual(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int, expansion: int):
    super().__init__()
    hidden = int(round(cin * expansion))
    layers = [_conv_bn(cin, hidden, 1, activation=nn.ReLU6)] if expansion != 1 else []
    self.body = nn.Sequential(
        *layers, _conv_bn(hidden, hidden, 3, stride, depthwise=True, activation=nn.ReLU6),
        _conv_bn(hidden, cout, 1, activation=None))  # Linear bottleneck.
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    return x + self.body(x) if self.residual else self.body(x)


def _mobilenet_v2(m, channels: int) -> nn.Sequential:
  from dl10_jax.models.mobilenet import V2_STAGES, make_divisible
  alpha, small = m.get('width_multiplier', 1.0), m.get('small_input', True)
  cin = make_divisible(32 * alpha)
  layers = [_conv_bn(channels, cin, 3, 1 if small else 2, activation=nn.ReLU6)]
  for t, c, n, s in V2_STAGES:
    if small and c == 24:
      s = 1
    for i in range(n):
      layers.append(_InvertedResidual(cin, make_divisible(c * alpha), s if i == 0 else 1, t))
      cin = make_divisible(c * alpha)
  last = make_divisible(1280 * max(1.0, alpha))
  return nn.Sequential(*layers, _conv_bn(cin, last, 1, activation=nn.ReLU6),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Dropout(m.get('dropout_rate', 0.2)), nn.Linear(last, m.num_classes))


class _ShuffleUnit(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    half = cout // 2
    self.stride = stride
    if stride != 1:
      self.branch1 = nn.Sequential(_conv_bn(cin, cin, 3, stride, depthwise=True, activation=None),
                                   _conv_bn(cin, half))
    self.branch2 = nn.Sequential(
        _conv_bn(cin if stride != 1 else cin // 2, half),
        _conv_bn(half, half, 3, stride, depthwise=True, activation=None), _conv_bn(half, half))

  def forward(self, x):
    if self.stride == 1:
      kept, y = x.chunk(2, dim=1)
    else:
      kept, y = self.branch1(x), x
    out = torch.cat([kept, self.branch2(y)], dim=1)
    b, c, h, w = out.shape  # Channel shuffle, 2 groups: g * C/2 + k -> k * 2 + g.
    return out.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


def _shufflenet_v2(m, channels: int) -> nn.Sequential:
  from dl10_jax.models.mobilenet import SHUFFLENET_CHANNELS, SHUFFLENET_REPEATS
  stem, *stages, last = SHUFFLENET_CHANNELS[m.get('width', 1.0)]
  small = m.get('small_input', True)
  layers = [_conv_bn(channels, stem, 3, 1 if small else 2)]
  if not small:
    layers.append(nn.MaxPool2d(3, 2, 1))
  cin = stem
  for repeats, features in zip(SHUFFLENET_REPEATS, stages):
    for i in range(repeats):
      layers.append(_ShuffleUnit(cin, features, 2 if i == 0 else 1))
      cin = features
  return nn.Sequential(*layers, _conv_bn(cin, last), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(last, m.num_classes))


def _lightweight(build):
  """A twin of configs/mobilenet.py's models: cross-entropy with label smoothing, as ResNet."""
  def twin(config):
    model = build(config.model, image_shape(config)[1]).to(memory_format=torch.channels_last)

    def loss(batch):
      return F.cross_entropy(model(images(batch, channels_last=True)),
                             torch.from_numpy(batch['label']).long(),
                             label_smoothing=config.label_smoothing)
    return model, loss
  return twin


TWINS = {'cnn': _cnn, 'recurrent_lm': _language_model(_RecurrentLM),
         'gpt': _language_model(_GPT), 'resnet': _cifar_resnet,
         'mobilenet_v1': _lightweight(_mobilenet_v1), 'mobilenet_v2': _lightweight(_mobilenet_v2),
         'shufflenet_v2': _lightweight(_shufflenet_v2), 'dcgan': dcgan, 'unet': ddpm}
# Twins whose step is not one loss and one optimizer: (config, compile_model) -> (step, count).
STEP_TWINS = {'dcgan': dcgan_step}


def make_step(config, compile_model: bool = False):
  """(step(batch) -> None, number of trainable parameters) for `config`'s model, optimizer, loss
  (and EMA of the weights, where the objective keeps one).

  The optimizer is optim.make_optimizer's (Adam's b2 = adam_b2; decay on parameters of >= 2
  dimensions; global-norm clipping) at a constant rate: the schedule does not change the cost.
  """
  if config.model.name in STEP_TWINS:
    return STEP_TWINS[config.model.name](config, compile_model)
  torch.manual_seed(0)
  model, loss_fn = TWINS[config.model.name](config)
  params = trainable(model)
  decay = [p for p in params if p.dim() >= 2]
  rest = [p for p in params if p.dim() < 2]
  betas = (0.9, config.get('adam_b2', 0.999))
  if config.optimizer == 'adamw':
    optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': config.weight_decay},
                                   {'params': rest, 'weight_decay': 0.0}],
                                  lr=config.learning_rate, betas=betas)
  elif config.optimizer == 'adam':
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, betas=betas)
  else:  # L2 on kernels only, as optim.make_optimizer.
    optimizer = torch.optim.SGD([{'params': decay, 'weight_decay': config.weight_decay},
                                 {'params': rest, 'weight_decay': 0.0}],
                                lr=config.learning_rate, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0)
  ema = EMA(params, model.ema_decay) if hasattr(model, 'ema_decay') else None
  loss_fn = torch.compile(loss_fn) if compile_model else loss_fn

  def step(batch):
    optimizer.zero_grad(set_to_none=True)
    loss_fn(batch).backward()
    if config.grad_clip_norm > 0:
      nn.utils.clip_grad_norm_(params, config.grad_clip_norm)
    optimizer.step()
    if ema is not None:
      ema.update()

  step.model, step.ema = model, ema  # For tests/test_torch_twins.py.
  return step, sum(p.numel() for p in params)


def matmul_flops(n: int = 2048) -> float:
  """PyTorch's float32 matmul FLOP/s: the median of 5 calls after one untimed call."""
  import statistics
  import time
  a = torch.randn(n, n)
  a @ a
  times = []
  for _ in range(5):
    start = time.perf_counter()
    a @ a
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times)
