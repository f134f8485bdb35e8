"""Input pipeline: datasets by name, data scaler, per-process shards, step-keyed resumable iterators.

Dataset names are compared without case, spaces, '-' or '_' ('CIFAR10', 'cifar_10' and 'cifar10' are
one name). Batch s of a run is a function of (seed, process, s), so a resumed run continues exactly
where it stopped: in-memory datasets index their epoch permutation directly; TF datasets start at the
epoch of batch s and skip only the part of that epoch before it, on undecoded records.

TensorFlow / TFDS are imported lazily inside the TF-backed sources only, so importing this module
(and the offline 'digits' / 'folder' datasets) never needs TensorFlow.
"""
import hashlib
import os
import re

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
SHUFFLE_BUFFER = 10_000  # examples in the tf.data shuffle buffer (undecoded, so a few hundred MB at most)


def get_scaler(centered):
    """Returns x -> model space: [0,1] -> [-1,1] if centered, identity otherwise (any shape)."""
    if centered:
        return lambda x: x * 2. - 1.
    return lambda x: x


def data_offset(centered) -> float:
    """b of the data scaler u -> a u + b: -1 for centred data, 0 otherwise."""
    return -1.0 if centered else 0.0


def get_inverse_scaler(centered):
    """Returns the inverse of get_scaler(centered): model space -> [0,1] (any shape)."""
    if centered:
        return lambda x: (x + 1.) / 2.
    return lambda x: x


def dataset_key(name: str) -> str:
    """Canonical dataset name: lower case without spaces, '-' or '_' ('CelebA_HQ' -> 'celebahq')."""
    return re.sub(r'[\s_-]', '', str(name).lower())


# ----------------------------------------------------------------------------- image files


def _png_bit_depth(path) -> int:
    """Bit depth per channel from a PNG header (0 if the file is not a PNG)."""
    with open(path, 'rb') as f:
        head = f.read(26)
    return head[24] if head[:8] == b'\x89PNG\r\n\x1a\n' and len(head) == 26 else 0


def read_image(path) -> np.ndarray:
    """(H, W, C) float32 in [0, 1] at the file's full precision (8- or 16-bit); C is 1, 3 or 4."""
    try:
        if _png_bit_depth(path) == 16:
            # Pillow reads 16-bit colour PNGs as 8-bit; TensorFlow decodes all 16 bits.
            import tensorflow as tf
            with open(path, 'rb') as f:
                arr = tf.io.decode_png(f.read(), dtype=tf.uint16).numpy()
            return arr.astype(np.float32) / 65535.
        with Image.open(path) as img:
            img.load()
            if img.mode in ('I;16', 'I;16L', 'I;16B', 'I'):
                return (np.asarray(img, np.float32) / 65535.)[..., None]
            if img.mode not in ('L', 'RGB', 'RGBA'):
                img = img.convert('RGBA' if 'A' in img.getbands() else 'RGB')
            arr = np.asarray(img, np.float32) / 255.
    except Exception as e:  # noqa: BLE001 -- any unreadable file gets the same answer, naming it
        raise ValueError(f'cannot read image {path} ({type(e).__name__}: {e}): remove or replace the file') from e
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


# ----------------------------------------------------------------------------- in-memory datasets


def _digits(d, split):
    """sklearn digits upsampled bilinearly: float32 (N, S, S, 1) in [0,1]; 1/6 held out as test."""
    from sklearn.datasets import load_digits
    digits = load_digits().images.astype(np.float32) / 16.
    size = d.image_size
    # Bilinear, not nearest: nearest upsampling would put every image exactly inside the 8x8
    # pooling subspace, so the 16->8 orthogonal component would be identically zero (degenerate
    # sigma_perp); bilinear keeps a small, realistic high-frequency component.
    images = np.stack([np.asarray(Image.fromarray(d, mode='F').resize((size, size), Image.BILINEAR))
                       for d in digits])
    images = np.clip(images, 0., 1.)[..., None]
    # Fixed permutation (independent of the run seed) so the split never changes between runs.
    perm = np.random.RandomState(0).permutation(len(images))
    n_test = len(images) // 6
    return images[np.sort(perm[n_test:] if split == 'train' else perm[:n_test])]


def _folder(d, split):
    """All images under data.data_dir (every split uses them all): (N, S, S, C) in [0,1]."""
    del split  # A folder of user images has no split.
    data_dir = d.data_dir
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f'dataset folder not found: config.data.data_dir={data_dir!r}')
    paths = image_files(data_dir)
    if not paths:
        raise ValueError(f'no {"/".join(IMAGE_EXTENSIONS)} images found in {data_dir} (config.data.data_dir)')
    return load_images(paths, d.image_size, d.num_channels)


def _numpy_batches(images, local_batch, shuffle, repeat, seed, process_index, start_step):
    """Yields (step, (local_batch, ...) rows of this shard); batch s is a pure function of s."""
    n = len(images)
    if n == 0:
        raise ValueError('this process received an empty shard of the dataset: use fewer processes or more data')

    def perm(epoch):
        if not shuffle:
            return np.arange(n)
        return np.random.default_rng([seed, process_index, epoch]).permutation(n)

    # Epochs are concatenated into one stream, so batches may straddle an epoch boundary.
    step = start_step
    while True:
        pos = step * local_batch + np.arange(local_batch)
        if not repeat:
            pos = pos[pos < n]
            if len(pos) == 0:
                return
        epochs = pos // n
        idx = np.concatenate([perm(e)[pos[epochs == e] % n] for e in np.unique(epochs)])
        yield step, images[idx]
        step += 1


# ----------------------------------------------------------------------------- TF datasets


def _crop_resize_uint8(img, size):
    """TF uint8 (H, W, C) -> uint8 (size, size, C): centre square, bicubic antialiased resize, rounded (reference)."""
    import tensorflow as tf
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    side = tf.minimum(h, w)
    img = img[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    img = tf.image.resize(img, (size, size), method='bicubic', antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)


def _resize_square(img, size):
    """TF (H, W, C) image (uint8 or float in [0, 1]) -> float (size, size, C), antialiased as in score-SDE."""
    import tensorflow as tf
    img = tf.image.convert_image_dtype(img, tf.float32)
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return tf.image.resize(img, [size, size], antialias=True)


class _TFDSSource:
    """This process's slice of a prepared TFDS split; elements stay encoded until `decode`."""

    def __init__(self, d, name, split, process_index, process_count, resize):
        import tensorflow_datasets as tfds
        self.name, self.resize, self.size = name, resize, d.image_size
        data_dir = d.tfds_data_dir or None
        self.builder = tfds.builder(name, data_dir=data_dir)
        self.split = tfds.even_splits(split, n=process_count)[process_index]
        self.hint = (f'run `tfds build {name}{" --data_dir=" + data_dir if data_dir else ""}` or set '
                     f'config.data.tfds_data_dir')

    def records(self, shuffle: bool, seed: int):
        """tf.data of undecoded examples, files in a seed-determined order when shuffling."""
        import tensorflow as tf
        import tensorflow_datasets as tfds
        try:
            return self.builder.as_dataset(split=self.split, shuffle_files=shuffle,
                                           read_config=tfds.ReadConfig(shuffle_seed=seed),
                                           decoders={'image': tfds.decode.SkipDecoding()})
        except (AssertionError, tf.errors.NotFoundError, FileNotFoundError) as e:
            raise FileNotFoundError(f'dataset {self.name} is not prepared in {self.builder.data_dir}; '
                                    f'{self.hint}') from e

    def num_examples(self) -> int:
        """Examples in this process's slice (from the dataset's metadata, else by counting records)."""
        try:
            return self.builder.info.splits[self.split].num_examples
        except (KeyError, ValueError):
            return int(self.records(False, 0).reduce(0, lambda n, _: n + 1))

    def decode(self, example):
        """Encoded example -> float32 (size, size, C) image in [0, 1]."""
        return self.resize(self.builder.info.features['image'].decode_example(example['image']), self.size)


class _TFRecordSource:
    """score-SDE TFRecords (features 'shape' [C,H,W] and raw uint8 'data'), sharded by record."""

    def __init__(self, d, process_index, process_count):
        import tensorflow as tf
        path = d.tfrecords_path
        self.files = sorted(tf.io.gfile.glob(path)) if path else []
        if not self.files:
            raise FileNotFoundError(f'no TFRecord files at config.data.tfrecords_path={path!r}')
        self.size, self.shard = d.image_size, (process_count, process_index)

    def records(self, shuffle: bool, seed: int):
        """tf.data of serialized records of this process's shard (shuffling happens downstream)."""
        import tensorflow as tf
        del shuffle, seed
        return tf.data.TFRecordDataset(self.files).shard(*self.shard)

    def num_examples(self) -> int:
        """Records in this process's shard, counted (the files carry no metadata)."""
        return int(self.records(False, 0).reduce(0, lambda n, _: n + 1))

    def decode(self, record):
        """Serialized record -> float32 (size, size, C) image in [0, 1]."""
        import tensorflow as tf
        sample = tf.io.parse_single_example(record, features={
            'shape': tf.io.FixedLenFeature([3], tf.int64), 'data': tf.io.FixedLenFeature([], tf.string)})
        data = tf.reshape(tf.io.decode_raw(sample['data'], tf.uint8), sample['shape'])
        return _resize_square(tf.transpose(data, (1, 2, 0)), self.size)


def _epoch_seed(seed, process_index, epoch) -> int:
    return int(np.random.SeedSequence([seed, process_index, epoch]).generate_state(1)[0])


def _tf_batches(source, local_batch, shuffle, repeat, seed, process_index, start_step):
    """Yields (step, numpy batch): per epoch, records shuffled by (seed, process, epoch), decoded after the skip."""
    import tensorflow as tf
    epoch, skip = 0, 0
    if start_step:
        per_epoch = source.num_examples() // local_batch
        if per_epoch == 0:
            raise ValueError(f'the batch of {local_batch} per process is larger than the dataset shard')
        epoch, skip = divmod(start_step, per_epoch)
    step = start_step
    while True:
        epoch_seed = _epoch_seed(seed, process_index, epoch)
        ds = source.records(shuffle, epoch_seed)
        if shuffle:
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=epoch_seed)
        if skip:  # only the start of the resumed epoch is read again, and not decoded
            ds, skip = ds.skip(skip * local_batch), 0
        ds = ds.map(source.decode, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(local_batch, drop_remainder=repeat).prefetch(2)
        for batch in ds.as_numpy_iterator():
            yield step, batch
            step += 1
        if not repeat:
            return
        epoch += 1


def _tfds(name, splits, resize):
    """Builder of a TFDS source; `splits` maps 'train'/'test' to the dataset's split names."""
    def build(d, split, process_index, process_count):
        return _TFDSSource(d, name, splits[split], process_index, process_count, resize)
    return build


def _celebahq(d, split, process_index, process_count):
    """CelebA-HQ from data.tfrecords_path if set (as the reference), else TFDS celeb_a_hq/256."""
    if d.tfrecords_path:
        return _TFRecordSource(d, process_index, process_count)
    return _tfds('celeb_a_hq/256', {'train': 'train', 'test': 'train'}, _resize_square)(
        d, split, process_index, process_count)


def _lsun(d, split, process_index, process_count):
    """LSUN category data.category (TFDS lsun/<category>), centre-cropped and resized as the reference."""
    if not d.category:
        raise ValueError("config.data.dataset='lsun' needs config.data.category, e.g. 'church_outdoor'")
    return _tfds(f'lsun/{d.category}', {'train': 'train', 'test': 'validation'},
                 lambda img, size: _resize_square(_crop_resize_uint8(img, size), size))(
        d, split, process_index, process_count)


# key -> (kind, builder), builders taking the data settings `d` (settings.Data). 'numpy': (d, split) ->
# (N, H, W, C) float32 in [0,1]; 'tf': (d, split, process_index, process_count) -> a source with records /
# num_examples / decode.
DATASETS = {
    'digits': ('numpy', _digits),
    'folder': ('numpy', _folder),
    'cifar10': ('tf', _tfds('cifar10', {'train': 'train', 'test': 'test'}, _resize_square)),
    'celebahq': ('tf', _celebahq),
    'lsun': ('tf', _lsun),
    'ffhq': ('tf', lambda d, split, *shard: _TFRecordSource(d, *shard)),
}


def content_id(data_settings, split: str) -> str:
    """Short hash of what a split's images are: the dataset, its files (names, sizes, times), size and channels.

    Anything cached from a split (reference statistics) is keyed on it, so a changed folder is read anew.
    """
    d = data_settings
    parts = [dataset_key(d.dataset), split, d.image_size, d.num_channels, d.category, d.tfds_data_dir]
    files = []
    if dataset_key(d.dataset) == 'folder' and d.data_dir and os.path.isdir(d.data_dir):
        files = image_files(d.data_dir)
        parts.append(os.path.abspath(d.data_dir))
    elif d.tfrecords_path:
        import glob
        files = sorted(glob.glob(d.tfrecords_path))
    for f in files:
        stat = os.stat(f)
        parts.append((f, stat.st_size, stat.st_mtime_ns))
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:10]


def _postprocess(d, images, flip, dequantize, seed, step, process_index):
    """(B, H, W, C) [0,1] batch -> model space, with flips / dequantisation keyed on the step."""
    # The randomness depends only on (seed, process, step) so a resumed run redraws it exactly.
    rng = np.random.default_rng([seed, process_index, step])
    images = np.asarray(images, dtype=np.float32)
    if flip:
        flipped = rng.random(len(images)) < 0.5
        images = np.where(flipped[:, None, None, None], images[:, :, ::-1], images)
    if dequantize:
        images = (images * 255. + rng.random(images.shape, dtype=np.float32)) / 256.
    return {'image': get_scaler(d.centered)(images).astype(np.float32)}


def get_dataset(d, split, batch_size, *, augment=True, process_index=0, process_count=1, seed=0,
                repeat=True, start_step=0):
    """Iterator of {'image': float32 (batch_size // process_count, H, W, C)} in model space; d: settings.Data.

    augment: random flips (train split, data.random_flip) and uniform dequantisation
    (data.uniform_dequantization, every split, as score-SDE) are applied only when True.
    """
    key = dataset_key(d.dataset)
    if key not in DATASETS:
        raise ValueError(f'unknown dataset config.data.dataset={d.dataset!r}; valid: {sorted(DATASETS)}')
    if split not in ('train', 'test'):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f'batch size {batch_size} must be a positive multiple of the {process_count} process(es)')
    local_batch = batch_size // process_count
    train = split == 'train'
    kind, builder = DATASETS[key]
    if kind == 'numpy':
        images = np.array_split(builder(d, split), process_count)[process_index]
        batches = _numpy_batches(images, local_batch, train, repeat, seed, process_index, start_step)
    else:
        source = builder(d, split, process_index, process_count)
        batches = _tf_batches(source, local_batch, train, repeat, seed, process_index, start_step)
    flip = augment and train and d.random_flip
    dequantize = augment and d.uniform_dequantization
    return (_postprocess(d, b, flip, dequantize, seed, step, process_index) for step, b in batches)
