"""PyTorch twins of the project's models, for scripts/benchmark.py (benchmark-only dependency).

Each twin is the *same* model (sizes, layers, loss, optimizer) as the JAX one its config builds:
`TWINS[config.model.name](config)` returns (module, optimizer, step) where step(batch) runs one
training update on a batch of the project's own pipeline (numpy).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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
  def __init__(self, m):
    super().__init__()
    cell = nn.LSTM if m.cell == 'lstm' else nn.RNN
    self.embed = nn.Embedding(m.vocab_size, m.embed_dim)
    self.rnn = cell(m.embed_dim, m.hidden_size, num_layers=m.num_layers, batch_first=True)
    self.head = nn.Linear(m.hidden_size, m.vocab_size)

  def forward(self, tokens):
    return self.head(self.rnn(self.embed(tokens))[0])


class _Block(nn.Module):
  def __init__(self, width, heads, ratio):
    super().__init__()
    self.heads = heads
    self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
    self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
    self.fc, self.fc_proj = nn.Linear(width, ratio * width), nn.Linear(ratio * width, width)

  def forward(self, x):
    b, t, w = x.shape
    q, k, v = self.qkv(self.ln1(x)).split(w, dim=2)
    q, k, v = (z.view(b, t, self.heads, w // self.heads).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.proj(y.transpose(1, 2).reshape(b, t, w))
    return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate='tanh'))


class _GPT(nn.Module):
  def __init__(self, m):
    super().__init__()
    self.wte = nn.Embedding(m.vocab_size, m.width)
    self.wpe = nn.Embedding(m.block_size, m.width)
    self.blocks = nn.ModuleList(_Block(m.width, m.num_heads, m.mlp_ratio)
                                for _ in range(m.num_layers))
    self.ln_f = nn.LayerNorm(m.width)

  def forward(self, tokens):
    x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
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


TWINS = {'cnn': _cnn, 'recurrent_lm': _language_model(_RecurrentLM),
         'gpt': _language_model(_GPT), 'resnet': _cifar_resnet}


def make_step(config, compile_model: bool = False):
  """(step(batch) -> None, number of parameters) for `config`'s model, optimizer and loss."""
  torch.manual_seed(0)
  model, loss_fn = TWINS[config.model.name](config)
  if config.optimizer == 'adamw':
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': config.weight_decay},
                                   {'params': rest, 'weight_decay': 0.0}],
                                  lr=config.learning_rate)
  elif config.optimizer == 'adam':
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
  else:  # L2 on kernels only, as optim.make_optimizer.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.SGD([{'params': decay, 'weight_decay': config.weight_decay},
                                 {'params': rest, 'weight_decay': 0.0}],
                                lr=config.learning_rate, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0)
  loss_fn = torch.compile(loss_fn) if compile_model else loss_fn

  def step(batch):
    optimizer.zero_grad(set_to_none=True)
    loss_fn(batch).backward()
    if config.grad_clip_norm > 0:
      nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
    optimizer.step()

  return step, sum(p.numel() for p in model.parameters())


def matmul_flops(n: int = 2048) -> float:
  import time
  a = torch.randn(n, n)
  best = math.inf
  for _ in range(5):
    start = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best
