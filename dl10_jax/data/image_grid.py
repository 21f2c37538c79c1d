"""Sample grids of generated images: one PNG per eval point and the sample CLI's output.

Shared by the image-generating objectives (GAN, diffusion) and dl10_jax/sample.py, so every grid
looks the same: rows of `columns` images in [-1, 1], separated by `padding` pixels of grey.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import jax
import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, columns: int = 8, padding: int = 2) -> np.ndarray:
  """[N, H, W, C] in [-1, 1] -> one [rows (H + p) + p, columns (W + p) + p, C] image in [0, 1]."""
  images = np.clip((np.asarray(images, np.float32) + 1) / 2, 0, 1)
  n, h, w, c = images.shape
  columns = max(1, min(columns, n))
  rows = math.ceil(n / columns)
  grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 0.5,
                 np.float32)
  for i, image in enumerate(images):
    top, left = padding + (i // columns) * (h + padding), padding + (i % columns) * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def save_png(path: str | pathlib.Path, grid: np.ndarray, scale: int = 1) -> None:
  """Writes a [H, W, C] image in [0, 1] (C = 1 or 3), each pixel repeated `scale` times."""
  pixels = np.round(np.asarray(grid) * 255).astype(np.uint8)
  pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def write_eval_grid(images: np.ndarray, step: int, workdir: str | pathlib.Path, writer: Any,
                    name: str = 'samples') -> pathlib.Path:
  """The grid of `images` [N, H, W, C] in [-1, 1] to WORKDIR/samples/step_<6-digit step>.png (process 0)
  and to TensorBoard as `name`; returns the PNG's path."""
  grid = make_grid(images)
  path = pathlib.Path(workdir) / 'samples' / f'step_{int(step):06d}.png'
  if jax.process_index() == 0:
    save_png(path, grid, scale=2)
  writer.write_image(step, name, np.repeat(grid, 3, axis=-1) if grid.shape[-1] == 1 else grid)
  return path
