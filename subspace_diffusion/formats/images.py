"""Image files: reading (8- and 16-bit, any mode) into [0, 1] floats, conversion to a size and channel count,
uint8 pixels, and grids of samples written as one PNG for people to look at."""
import math
import os

import numpy as np
from PIL import Image, ImageOps

from subspace_diffusion.formats.files import FileProblem, guarded

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
MAX_PIXELS = 1 << 26  # 8192 x 8192: larger images are refused from their header, before any decoding


def _png_header(path):
    """(bit depth per channel, width, height) from a PNG's IHDR chunk, or None if the file is not a PNG."""
    with open(path, 'rb') as f:
        head = f.read(26)
    if head[:8] != b'\x89PNG\r\n\x1a\n' or len(head) < 26 or head[12:16] != b'IHDR':
        return None
    return head[24], int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')


def _check_pixels(path, width: int, height: int):
    if width * height > MAX_PIXELS:
        side = int(MAX_PIXELS ** 0.5)
        raise FileProblem(f'image {path} is {width}x{height} pixels, over the limit of {MAX_PIXELS:,} ({side}x{side}), '
                          f'checked before decoding: resize it or remove it')


def read_image(path, what: str = 'image', fix: str = 'remove or replace the file') -> np.ndarray:
    """(H, W, C) float32 in [0, 1] at the file's full precision (8- or 16-bit), upright; C is 1, 3 or 4.

    The pixel count is read from the header and checked against MAX_PIXELS before any decoder allocates; an EXIF
    orientation (a camera's JPEG stored sideways) is applied as viewers apply it. `what` and `fix` name the file's
    role and the remedy in the one line a bad file gets.
    """
    with guarded(path, what, fix):
        png = _png_header(path)
        if png is not None:
            _check_pixels(path, png[1], png[2])
        try:
            if png is not None and png[0] == 16:
                # Pillow reads 16-bit colour PNGs as 8-bit; TensorFlow decodes all 16 bits.
                import tensorflow as tf
                with open(path, 'rb') as f:
                    arr = tf.io.decode_png(f.read(), dtype=tf.uint16).numpy()
                return arr.astype(np.float32) / 65535.
            with Image.open(path) as img:
                _check_pixels(path, *img.size)  # the header only: nothing is decoded yet
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.mode in ('I;16', 'I;16L', 'I;16B', 'I'):
                    return (np.asarray(img, np.float32) / 65535.)[..., None]
                if img.mode not in ('L', 'RGB', 'RGBA'):
                    img = img.convert('RGBA' if 'A' in img.getbands() else 'RGB')
                arr = np.asarray(img, np.float32) / 255.
        except FileProblem:
            raise
        except Exception as e:  # noqa: BLE001 -- any undecodable file (PIL, TensorFlow) gets the same answer
            raise FileProblem(f'cannot read {what} {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]}): '
                              f'{fix}') from None
    return arr[..., None] if arr.ndim == 2 else arr


def to_channels(image, channels: int) -> np.ndarray:
    """(H, W, C) -> (H, W, channels): grey from colour by the channel mean, colour from grey by copying, alpha dropped."""
    image = image[..., :3] if image.shape[-1] == 4 else image
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        return image.mean(axis=-1, keepdims=True)
    return np.repeat(image, channels, axis=-1)


def center_crop_resize(image, size: int) -> np.ndarray:
    """(H, W, C) float -> (size, size, C): the centre square, resized bicubically in float (no 8-bit rounding)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top:top + side, left:left + side]
    if side == size:
        return image.astype(np.float32)
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode='F').resize(
        (size, size), Image.BICUBIC)) for c in range(image.shape[-1])]
    return np.clip(np.stack(planes, axis=-1), 0., 1.)


def image_files(folder) -> list:
    """Sorted paths of the images (IMAGE_EXTENSIONS) under `folder`, recursively."""
    return sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS))


def load_images(paths, size: int, channels: int) -> np.ndarray:
    """(N, size, size, channels) float32 in [0, 1]: each file read, converted, centre-cropped and resized."""
    return np.stack([center_crop_resize(to_channels(read_image(p), channels), size) for p in paths])


def to_uint8(x01) -> np.ndarray:
    """[0, 1] floats -> uint8 pixels (as images are stored and scored)."""
    return np.round(np.clip(np.asarray(x01, np.float32), 0., 1.) * 255).astype(np.uint8)


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
