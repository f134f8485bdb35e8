"""Image grids for people to look at: samples in [0, 1] -> one PNG."""
import math
import os

import numpy as np
from PIL import Image


def image_grid(images, ncol=None, pad=1):
    """(N, H, W, C) floats in [0, 1] -> (rows (H+pad), ncol (W+pad), C) uint8 grid, row-major."""
    images = np.clip(np.asarray(images, np.float32), 0., 1.)
    n, h, w, c = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = img
    return np.round(grid * 255).astype(np.uint8)


def save_image_grid(images, path, ncol=None, min_size=256):
    """Write a PNG grid of (N, H, W, C) images in [0, 1], upscaled (nearest) so small images stay visible."""
    grid = image_grid(images, ncol)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    scale = max(1, math.ceil(min_size / max(img.size)))
    if scale > 1:
        img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return grid
