"""PyTorch twins of the project's models, for scripts/benchmark.py (benchmark-only dependency).

Each twin is the *same* model (sizes, layers, loss, optimizer) as the JAX one its config builds,
with the same number of trainable parameters (tests/test_torch_twins.py):
`TWINS[config.model.name](config)` returns (module, loss_fn), loss_fn(batch) the training loss of
a batch of the project's own pipeline (numpy); `make_step(config)` adds the optimizer (and the EMA
of the weights where the objective keeps one) and returns (step(batch), number of parameters).
The GAN, two networks with two optimizers and losses, has its own step builder (`STEP_TWINS`).

Convolutions pad as the JAX models' 'SAME' (the odd pixel of padding after, `_SameConv2d`), so a
strided layer sees the same windows, not torchvision's symmetric padding.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# --- Shared pieces. ---

# Image side and channels of the image datasets (the twins are built before any data is seen).
IMAGE_SHAPES = {'mnist': (28, 1), 'fashion_mnist': (28, 1), 'cifar10': (32, 3)}


def _image_shape(config) -> tuple[int, int]:
  name = config.dataset.name
  if name not in IMAGE_SHAPES:
    raise ValueError(f'the PyTorch twins know the image datasets {", ".join(IMAGE_SHAPES)}, '
                     f'not {name!r}')
  return IMAGE_SHAPES[name]


def _images(batch, channels_last: bool = False) -> torch.Tensor:
  """The batch's float images [B, H, W, C] as a torch [B, C, H, W] tensor."""
  x = torch.from_numpy(np.ascontiguousarray(batch['image'].transpose(0, 3, 1, 2)))
  return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow/flax 'SAME' (models/layers.same_padding): the odd pixel of padding goes after."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class _SameConv2d(nn.Conv2d):
  """nn.Conv2d with flax's padding='SAME': symmetric padding where that is the same, else an
  explicit pad (e.g. a 3x3/2 conv on 28x28 pads 0 before and 1 after)."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
               bias: bool = True):
    super().__init__(cin, cout, kernel, stride, 0, groups=groups, bias=bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    (top, bottom), (left, right) = (_same_padding(n, k, s) for n, k, s in
                                    zip(x.shape[-2:], self.kernel_size, self.stride))
    if top == bottom and left == right:
      return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0,
                    1, self.groups)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
  return [p for p in module.parameters() if p.requires_grad]


def num_trainable(module: nn.Module) -> int:
  return sum(p.numel() for p in _trainable(module))


class _EMA:
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
def _frozen_batch_stats(module: nn.Module):
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
  """models/mobilenet.ConvBN: conv (no bias, 'SAME') + BatchNorm + activation (None: linear)."""
  layers = [_SameConv2d(cin, cout, kernel, stride, groups=cin if depthwise else 1, bias=False),
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
    model = build(config.model, _image_shape(config)[1]).to(memory_format=torch.channels_last)

    def loss(batch):
      return F.cross_entropy(model(_images(batch, channels_last=True)),
                             torch.from_numpy(batch['label']).long(),
                             label_smoothing=config.label_smoothing)
    return model, loss
  return twin


# --- DCGAN: models/gan.py, trained as train/gan.py. ---


def _upsamplings(image_size: int) -> tuple[int, int]:
  """models/gan.upsamplings: (base, k) with image_size = base * 2^k, base in 4..7."""
  base, k = image_size, 0
  while base % 2 == 0 and base > 7:
    base, k = base // 2, k + 1
  if not 4 <= base <= 7 or k == 0:
    raise ValueError(f'model.image_size={image_size} is not 4..7 times a power of two')
  return base, k


class _Generator(nn.Module):
  """z -> Dense (no bias) -> [width, base, base] -> BN + ReLU -> k x ConvTranspose(4, 2, 1)
  (BN + ReLU between; bias on the last only) -> tanh. The JAX model computes each transposed
  conv as a 3x3 conv to the four output phases + depth-to-space (faster on CPU in XLA); that is
  the same function with the same [4, 4, Cin, Cout] kernel, so the twin uses PyTorch's own
  ConvTranspose2d, the reference DCGAN's layer."""

  def __init__(self, m):
    super().__init__()
    self.base, k = _upsamplings(m.image_size)
    self.width = m.features * 2 ** (k - 1)
    self.dense = nn.Linear(m.latent_dim, self.base * self.base * self.width, bias=False)
    self.bn = nn.BatchNorm2d(self.width)
    layers, cin = [], self.width
    for i in range(k):
      last = i == k - 1
      cout = m.channels if last else self.width // 2 ** (i + 1)
      layers.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=last))
      if not last:
        layers += [nn.BatchNorm2d(cout), nn.ReLU()]
      cin = cout
    self.convs = nn.Sequential(*layers)

  def forward(self, z):
    x = self.dense(z).view(z.shape[0], self.width, self.base, self.base)
    x = x.contiguous(memory_format=torch.channels_last)
    return torch.tanh(self.convs(F.relu(self.bn(x))))


class _Discriminator(nn.Module):
  """k x (4x4/2 conv 'SAME', F * 2^i channels, bias and no BN on the first, BN on the others,
  LeakyReLU 0.2) -> Dense -> one logit."""

  def __init__(self, m):
    super().__init__()
    _, k = _upsamplings(m.image_size)
    layers, cin, size = [], m.channels, m.image_size
    for i in range(k):
      cout = m.features * 2 ** i
      layers.append(_SameConv2d(cin, cout, 4, 2, bias=i == 0))
      if i:
        layers.append(nn.BatchNorm2d(cout))
      layers.append(nn.LeakyReLU(0.2))
      cin, size = cout, -(-size // 2)
    self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * size * size, 1))

  def forward(self, x):
    return self.body(x)[:, 0]  # [B] logits of "real".


def _dcgan(config):
  """(nn.ModuleDict of both networks, None): a GAN has no single loss; see `_dcgan_step`."""
  return nn.ModuleDict({'generator': _Generator(config.model),
                        'discriminator': _Discriminator(config.model)}), None


def _dcgan_step(config, compile_model: bool = False):
  """train/gan.GAN.train_step: D's Adam update on real and (constant) generated
  images, each in its own BN pass, then G's on the non-saturating loss against the updated D
  (D's weights frozen, its running statistics untouched), then the EMA of G's weights."""
  if config.optimizer != 'adam':
    raise ValueError(f'objective=gan trains with Adam, not optimizer={config.optimizer!r}')
  torch.manual_seed(0)
  nets, _ = _dcgan(config)
  nets = nets.to(memory_format=torch.channels_last)
  g, d = nets['generator'], nets['discriminator']
  gan, latent = config.gan, config.model.latent_dim
  g_opt, d_opt = (torch.optim.Adam(net.parameters(), lr=config.learning_rate,
                                   betas=(gan.b1, gan.b2)) for net in (g, d))
  ema = _EMA(g.parameters(), gan.ema_decay)
  bce = F.binary_cross_entropy_with_logits

  def d_loss(real, fake):
    real_logits, fake_logits = d(real), d(fake)  # Separate passes: BN never mixes the two.
    loss = (bce(real_logits, torch.full_like(real_logits, 1 - gan.label_smoothing)) +
            bce(fake_logits, torch.zeros_like(fake_logits)))
    if gan.r1_weight:  # r1_weight / 2 * E|grad_x D(x)|^2 on the real images.
      x = real.detach().requires_grad_(True)
      with _frozen_batch_stats(d):
        grad, = torch.autograd.grad(d(x).sum(), x, create_graph=True)
      loss = loss + gan.r1_weight / 2 * grad.square().sum(dim=(1, 2, 3)).mean()
    return loss

  def g_loss(z):
    logits = d(g(z))
    return bce(logits, torch.ones_like(logits))

  if compile_model:
    d_loss, g_loss = torch.compile(d_loss), torch.compile(g_loss)

  def step(batch):
    real = _images(batch, channels_last=True) * 2 - 1  # The data's [0, 1] -> G's [-1, 1].
    n = real.shape[0]
    with torch.no_grad(), _frozen_batch_stats(g):  # G's samples are constants for D's update.
      fake = g(torch.randn(n, latent))
    d_opt.zero_grad(set_to_none=True)
    d_loss(real, fake).backward()
    d_opt.step()
    d.requires_grad_(False)  # Only G's gradient; D's BN uses the batch but keeps its averages.
    g_opt.zero_grad(set_to_none=True)
    with _frozen_batch_stats(d):
      g_loss(torch.randn(n, latent)).backward()
    g_opt.step()
    d.requires_grad_(True)
    ema.update()

  step.model, step.ema = nets, ema  # For tests/test_torch_twins.py.
  return step, num_trainable(nets)


# --- DDPM U-Net: models/unet.py, trained as train/diffusion.py. ---


def _group_norm(groups: int, channels: int) -> nn.GroupNorm:
  return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-5)  # models/unet._group_norm


class _ResBlock(nn.Module):
  def __init__(self, cin: int, cout: int, groups: int, emb_dim: int, dropout: float):
    super().__init__()
    self.norm1, self.conv1 = _group_norm(groups, cin), _SameConv2d(cin, cout, 3)
    self.time = nn.Linear(emb_dim, cout)
    self.norm2, self.drop = _group_norm(groups, cout), nn.Dropout(dropout)
    self.conv2 = _SameConv2d(cout, cout, 3)
    self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

  def forward(self, x, temb):
    h = self.conv1(F.silu(self.norm1(x))) + self.time(F.silu(temb))[:, :, None, None]
    h = self.conv2(self.drop(F.silu(self.norm2(h))))
    return self.shortcut(x) + h


class _AttentionBlock(nn.Module):
  """x + attention(GroupNorm(x)) over the H*W positions; q, k, v, out projections with biases
  (models/attention.MultiHeadAttention), q/k/v as one matmul."""

  def __init__(self, channels: int, head_channels: int, groups: int):
    super().__init__()
    self.heads = max(1, channels // head_channels)
    if channels % self.heads:
      raise ValueError(f'{self.heads} heads do not divide {channels} channels')
    self.norm = _group_norm(groups, channels)
    self.qkv, self.out = nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)

  def forward(self, x):
    b, c, h, w = x.shape
    y = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
    q, k, v = self.qkv(y).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
    return x + self.out(y).transpose(1, 2).reshape(b, c, h, w)


class _UNet(nn.Module):
  """models/unet.UNet: (x_t [B, C, H, W], t [B]) -> [B, C, H, W]."""

  def __init__(self, m, image_size: int, channels: int):
    super().__init__()
    c, mults, blocks = m.channels, tuple(m.channel_mults), m.num_res_blocks
    self.mults, self.num_res_blocks = mults, blocks
    emb_dim = 4 * c
    half = c // 2
    self.register_buffer('freqs', torch.exp(-math.log(10_000.0) *
                                            torch.arange(half, dtype=torch.float32) / half))
    self.time_dense0, self.time_dense1 = nn.Linear(c, emb_dim), nn.Linear(emb_dim, emb_dim)
    layers = {'conv_in': _SameConv2d(channels, c, 3)}
    block = lambda cin, cout: _ResBlock(cin, cout, m.num_groups, emb_dim, m.dropout)
    attention = lambda ch: _AttentionBlock(ch, m.head_channels, m.num_groups)
    ch, size = c, image_size
    skips = [(ch, size)]
    for level, mult in enumerate(mults):
      for i in range(blocks):
        layers[f'down{level}_block{i}'] = block(ch, c * mult)
        ch = c * mult
        if size in m.attention_resolutions:
          layers[f'down{level}_attention{i}'] = attention(ch)
        skips.append((ch, size))
      if level < len(mults) - 1:
        layers[f'down{level}_downsample'] = _SameConv2d(ch, ch, 3, 2)
        size = -(-size // 2)
        skips.append((ch, size))
    layers['mid_block0'], layers['mid_attention'] = block(ch, ch), attention(ch)
    layers['mid_block1'] = block(ch, ch)
    for level, mult in reversed(list(enumerate(mults))):
      for i in range(blocks + 1):
        layers[f'up{level}_block{i}'] = block(ch + skips.pop()[0], c * mult)
        ch = c * mult
        if size in m.attention_resolutions:
          layers[f'up{level}_attention{i}'] = attention(ch)
      if level > 0:
        size = skips[-1][1]
        layers[f'up{level}_upsample'] = _SameConv2d(ch, c * mults[level - 1], 3)
        ch = c * mults[level - 1]
    assert not skips
    layers['norm_out'] = _group_norm(m.num_groups, ch)
    layers['conv_out'] = _SameConv2d(ch, m.get('out_channels', 0) or channels, 3)
    self.layers = nn.ModuleDict(layers)

  def _embed(self, t):
    """models/unet.timestep_embedding: [sin, cos] (a zero column for an odd width)."""
    args = t.float()[:, None] * self.freqs[None, :]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    return F.pad(emb, (0, self.time_dense0.in_features - emb.shape[-1]))

  def forward(self, x, t):
    layer = self.layers
    temb = self.time_dense1(F.silu(self.time_dense0(self._embed(t))))
    h = layer['conv_in'](x)
    skips = [h]
    for level in range(len(self.mults)):
      for i in range(self.num_res_blocks):
        h = layer[f'down{level}_block{i}'](h, temb)
        if f'down{level}_attention{i}' in layer:
          h = layer[f'down{level}_attention{i}'](h)
        skips.append(h)
      if level < len(self.mults) - 1:
        h = layer[f'down{level}_downsample'](h)
        skips.append(h)
    h = layer['mid_block1'](layer['mid_attention'](layer['mid_block0'](h, temb)), temb)
    for level in reversed(range(len(self.mults))):
      for i in range(self.num_res_blocks + 1):
        h = layer[f'up{level}_block{i}'](torch.cat([h, skips.pop()], dim=1), temb)
        if f'up{level}_attention{i}' in layer:
          h = layer[f'up{level}_attention{i}'](h)
      if level > 0:  # Nearest (jax.image.resize's half-pixel rule) to the skip's size.
        h = F.interpolate(h, size=skips[-1].shape[-2:], mode='nearest-exact')
        h = layer[f'up{level}_upsample'](h)
    return layer['conv_out'](F.silu(layer['norm_out'](h)))


def _ddpm(config):
  """train/diffusion.Diffusion.loss: t ~ U{0..T-1}, x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps, the
  weighted MSE to eps (or v); the model's `ema_decay` makes make_step keep the EMA."""
  from dl10_jax.models.diffusion_process import cosine_betas, linear_betas
  d = config.diffusion
  if d.schedule not in ('linear', 'cosine') or d.prediction not in ('eps', 'v'):
    raise ValueError(f'no PyTorch twin for diffusion.schedule={d.schedule!r}, '
                     f'prediction={d.prediction!r}')
  betas = (linear_betas if d.schedule == 'linear' else cosine_betas)(d.num_timesteps)
  alphas_cumprod = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)  # float64 -> 32
  weighting, gamma = d.get('loss_weighting', 'uniform'), d.get('min_snr_gamma', 5.0)
  size, channels = _image_shape(config)
  model = _UNet(config.model, size, channels).to(memory_format=torch.channels_last)
  model.ema_decay = d.ema_decay

  def loss(batch):
    x0 = _images(batch, channels_last=True) * 2 - 1  # [B, C, H, W] in [-1, 1]
    t = torch.randint(0, d.num_timesteps, x0.shape[:1])
    noise = torch.randn_like(x0)
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = noise if d.prediction == 'eps' else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    per_example = (model(x_t, t) - target).square().mean(dim=(1, 2, 3))  # [B]
    if weighting == 'uniform':
      return per_example.mean()
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])  # Min-SNR-gamma weighting
    weight = (torch.clamp(gamma / snr, max=1.0) if d.prediction == 'eps'
              else torch.clamp(snr, max=gamma) / (snr + 1))
    return (weight * per_example).mean()
  return model, loss


TWINS = {'cnn': _cnn, 'recurrent_lm': _language_model(_RecurrentLM),
         'gpt': _language_model(_GPT), 'resnet': _cifar_resnet,
         'mobilenet_v1': _lightweight(_mobilenet_v1), 'mobilenet_v2': _lightweight(_mobilenet_v2),
         'shufflenet_v2': _lightweight(_shufflenet_v2), 'dcgan': _dcgan, 'unet': _ddpm}
# Twins whose step is not one loss and one optimizer: (config, compile_model) -> (step, count).
STEP_TWINS = {'dcgan': _dcgan_step}


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
  params = _trainable(model)
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
  ema = _EMA(params, model.ema_decay) if hasattr(model, 'ema_decay') else None
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
