"""PyTorch twins of the generative models, the DCGAN (with its two-network step) and the DDPM
U-Net, for scripts/torch_twins.py (which registers them)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_twins_common import (EMA, SameConv2d, frozen_batch_stats, image_shape, images,
                                num_trainable)


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
  (BN + ReLU between; bias on the last only) -> tanh, at width `generator_features` (0: as
  `features`). The JAX model computes each transposed conv by its four output phases (faster on
  CPU in XLA: models/gan.conv_transpose_2x); that is the same function with the same
  [4, 4, Cin, Cout] kernel, so the twin uses PyTorch's own ConvTranspose2d, the reference DCGAN's
  layer."""

  def __init__(self, m):
    super().__init__()
    self.base, k = _upsamplings(m.image_size)
    self.width = (m.generator_features or m.features) * 2 ** (k - 1)
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
      layers.append(SameConv2d(cin, cout, 4, 2, bias=i == 0))
      if i:
        layers.append(nn.BatchNorm2d(cout))
      layers.append(nn.LeakyReLU(0.2))
      cin, size = cout, -(-size // 2)
    self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * size * size, 1))

  def forward(self, x):
    return self.body(x)[:, 0]  # [B] logits of "real".


def dcgan(config):
  """(nn.ModuleDict of both networks, None): a GAN has no single loss; see `_dcgan_step`."""
  return nn.ModuleDict({'generator': _Generator(config.model),
                        'discriminator': _Discriminator(config.model)}), None


def dcgan_step(config, compile_model: bool = False):
  """train/gan.GAN.train_step: D's Adam update on real and (constant) generated
  images, each in its own BN pass, then G's on the non-saturating loss against the updated D
  (D's weights frozen, its running statistics untouched; on D's own batch with reuse_fakes),
  then the EMA of G's weights."""
  if config.optimizer != 'adam':
    raise ValueError(f'objective=gan trains with Adam, not optimizer={config.optimizer!r}')
  torch.manual_seed(0)
  nets, _ = dcgan(config)
  nets = nets.to(memory_format=torch.channels_last)
  g, d = nets['generator'], nets['discriminator']
  gan, latent = config.gan, config.model.latent_dim
  g_opt, d_opt = (torch.optim.Adam(net.parameters(), lr=config.learning_rate,
                                   betas=(gan.b1, gan.b2)) for net in (g, d))
  ema = EMA(g.parameters(), gan.ema_decay)
  bce = F.binary_cross_entropy_with_logits

  def d_loss(real, fake):
    real_logits, fake_logits = d(real), d(fake)  # Separate passes: BN never mixes the two.
    loss = (bce(real_logits, torch.full_like(real_logits, 1 - gan.label_smoothing)) +
            bce(fake_logits, torch.zeros_like(fake_logits)))
    if gan.r1_weight:  # r1_weight / 2 * E|grad_x D(x)|^2 on the real images.
      x = real.detach().requires_grad_(True)
      with frozen_batch_stats(d):
        grad, = torch.autograd.grad(d(x).sum(), x, create_graph=True)
      loss = loss + gan.r1_weight / 2 * grad.square().sum(dim=(1, 2, 3)).mean()
    return loss

  def g_loss(images):
    logits = d(images)
    return bce(logits, torch.ones_like(logits))

  if compile_model:
    d_loss, g_loss = torch.compile(d_loss), torch.compile(g_loss)

  def step(batch):
    real = images(batch, channels_last=True) * 2 - 1  # The data's [0, 1] -> G's [-1, 1].
    n = real.shape[0]
    if gan.reuse_fakes:  # One G pass, kept for G's update (the PyTorch DCGAN example).
      fake = g(torch.randn(n, latent))
    else:
      with torch.no_grad(), frozen_batch_stats(g):  # G's samples are constants for D's update.
        fake = g(torch.randn(n, latent))
    d_opt.zero_grad(set_to_none=True)
    d_loss(real, fake.detach()).backward()
    d_opt.step()
    d.requires_grad_(False)  # Only G's gradient; D's BN uses the batch but keeps its averages.
    g_opt.zero_grad(set_to_none=True)
    with frozen_batch_stats(d):
      g_loss(fake if gan.reuse_fakes else g(torch.randn(n, latent))).backward()
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
    self.norm1, self.conv1 = _group_norm(groups, cin), SameConv2d(cin, cout, 3)
    self.time = nn.Linear(emb_dim, cout)
    self.norm2, self.drop = _group_norm(groups, cout), nn.Dropout(dropout)
    self.conv2 = SameConv2d(cout, cout, 3)
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
    layers = {'conv_in': SameConv2d(channels, c, 3)}
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
        layers[f'down{level}_downsample'] = SameConv2d(ch, ch, 3, 2)
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
        layers[f'up{level}_upsample'] = SameConv2d(ch, c * mults[level - 1], 3)
        ch = c * mults[level - 1]
    assert not skips
    layers['norm_out'] = _group_norm(m.num_groups, ch)
    layers['conv_out'] = SameConv2d(ch, m.get('out_channels', 0) or channels, 3)
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


def ddpm(config):
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
  size, channels = image_shape(config)
  model = _UNet(config.model, size, channels).to(memory_format=torch.channels_last)
  model.ema_decay = d.ema_decay

  def loss(batch):
    x0 = images(batch, channels_last=True) * 2 - 1  # [B, C, H, W] in [-1, 1]
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
