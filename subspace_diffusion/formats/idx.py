"""IDX files (the format of MNIST and Fashion-MNIST), read with numpy, gzipped or not, checked before use.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data. MNIST-style sets use unsigned bytes (type 0x08): images
`(N, rows, cols)` in `*-images-idx3-ubyte`, labels `(N,)` in `*-labels-idx1-ubyte`. A damaged, truncated
or mismatched file is one `FileProblem` line naming it.
"""
import gzip
import hashlib
import math
import os

import numpy as np

from subspace_diffusion.formats.files import FileProblem, guarded

UBYTE = 0x08
SPLITS = {'train': 'train', 'test': 't10k'}  # our split -> the IDX file prefix
MAX_BYTES = 1 << 31  # a header promising more data than this is refused before reading
CLASSES = 10  # MNIST and Fashion-MNIST label their images 0..9
FIX = 'replace it with the canonical file (see docs/training.md, "Datasets")'


def _open(path):
    with open(path, 'rb') as f:
        gzipped = f.read(2) == b'\x1f\x8b'
    return gzip.open(path, 'rb') if gzipped else open(path, 'rb')


def read_idx(path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file with `ndim` dimensions (3: images, 1: labels); FileProblem otherwise."""
    with guarded(path, 'IDX file', FIX):
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b'\x00\x00':
                raise FileProblem(f'IDX file {path} does not start with an IDX magic number: {FIX}')
            if head[2] != UBYTE or head[3] != ndim:
                raise FileProblem(f'IDX file {path} holds {head[3]}-d data of type 0x{head[2]:02x}, expected '
                                  f'{ndim}-d unsigned bytes (0x08): {FIX}')
            dims = np.frombuffer(f.read(4 * ndim), '>u4')
            if len(dims) < ndim:
                raise FileProblem(f'IDX file {path} is truncated inside its header: {FIX}')
            size = math.prod(int(n) for n in dims)
            if size > MAX_BYTES:
                raise FileProblem(f'IDX file {path} promises {size} bytes of data: {FIX}')
            data = f.read(size + 1)
        if len(data) != size:
            what = 'truncated' if len(data) < size else 'longer than its header says'
            raise FileProblem(f'IDX file {path} is {what} ({len(data)} data bytes, the header says {size}): {FIX}')
        return np.frombuffer(data, np.uint8).reshape(tuple(int(n) for n in dims))


def digest(path) -> str:
    """sha1 (hex) of an IDX file's decompressed bytes: the same images give the same digest, gzipped or not."""
    h = hashlib.sha1()
    with guarded(path, 'IDX file', FIX):
        with _open(path) as f:
            for block in iter(lambda: f.read(1 << 22), b''):
                h.update(block)
    return h.hexdigest()


def find(folder, split: str, kind: str) -> str:
    """The path of `<prefix>-<kind>-idx?-ubyte[.gz]` in `folder` (kind 'images' or 'labels'), or FileProblem."""
    stem = f'{SPLITS[split]}-{kind}-idx{3 if kind == "images" else 1}-ubyte'
    for name in (stem, stem + '.gz', stem.replace('-idx', '.idx')):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileProblem(f'no {stem}[.gz] in {folder} (config.data.data_dir): point it at the folder of the IDX files '
                      f'(see docs/training.md, "Datasets")')


def read_split(folder, split: str):
    """(images uint8 (N, rows, cols), labels uint8 (N,)) of a split's IDX pair in `folder`: at least one image, as
    many labels, each a class 0..CLASSES-1."""
    images_path, labels_path = find(folder, split, 'images'), find(folder, split, 'labels')
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) == 0:
        raise FileProblem(f'IDX file {images_path} holds no images (its header says 0): {FIX}')
    if len(images) != len(labels):
        raise FileProblem(f'the {split} IDX files in {folder} disagree: {len(images)} images but {len(labels)} '
                          f'labels: replace them with a matching pair')
    wrong = labels >= CLASSES
    if wrong.any():
        # A metric's classifier trained on them would score its own noise: a damaged or foreign label file.
        raise FileProblem(f'IDX file {labels_path} has {int(wrong.sum())} label(s) outside the {CLASSES} classes '
                          f'0..{CLASSES - 1} (the first, {int(labels[wrong][0])}, at row {int(wrong.argmax())}): '
                          f'{FIX}')
    return images, labels
