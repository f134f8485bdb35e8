"""Synthetic IDX files (the MNIST / Fashion-MNIST format) written by the tests."""
import gzip

import numpy as np


def write_idx(path, array, magic_type=0x08, gz=False, cut=0):
    """Write `array` (uint8) as an IDX file (optionally gzipped, or cut short by `cut` bytes)."""
    raw = bytes([0, 0, magic_type, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
    raw += np.ascontiguousarray(array, np.uint8).tobytes()
    raw = raw[:len(raw) - cut] if cut else raw
    (gzip.open if gz else open)(str(path) + ('.gz' if gz else ''), 'wb').write(raw)


def idx_folder(folder, n=(20, 8), gz=True):
    """Synthetic 28x28 IDX train / t10k files (random images and labels) in `folder` -> {split: (images, labels)}."""
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    arrays = {}
    for split, prefix, count in (('train', 'train', n[0]), ('test', 't10k', n[1])):
        images, labels = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count)
        write_idx(folder / f'{prefix}-images-idx3-ubyte', images, gz=gz)
        write_idx(folder / f'{prefix}-labels-idx1-ubyte', labels.astype(np.uint8), gz=gz)
        arrays[split] = images, labels
    return arrays
