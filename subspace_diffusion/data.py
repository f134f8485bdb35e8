"""Input pipeline: datasets by name, data scaler, per-process sharding, resumable iterators.

TensorFlow / TFDS are imported lazily inside the TF-backed builders only, so importing this
module (and the offline 'digits' / 'folder' datasets) never needs TensorFlow.
"""
import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def get_scaler(centered):
    """Returns x -> model space: [0,1] -> [-1,1] if centered, identity otherwise (any shape)."""
    if centered:
        return lambda x: x * 2. - 1.
    return lambda x: x


def get_inverse_scaler(centered):
    """Returns the inverse of get_scaler(centered): model space -> [0,1] (any shape)."""
    if centered:
        return lambda x: (x + 1.) / 2.
    return lambda x: x


def center_crop_resize(img, size):
    """PIL image -> (size, size) PIL image: shorter side resized to size, then centre crop."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _digits_builder(config, split):
    """sklearn digits upsampled bilinearly: float32 (N, S, S, 1) in [0,1]; 1/6 held out as test."""
    from sklearn.datasets import load_digits
    digits = load_digits().images.astype(np.float32) / 16.
    size = config.data.image_size
    # Bilinear, not nearest: nearest upsampling would put every image exactly inside the 8x8
    # pooling subspace, so the 16->8 orthogonal component would be identically zero (degenerate
    # sigma_perp); bilinear keeps a small, realistic high-frequency component.
    images = np.stack([
            np.asarray(Image.fromarray(d, mode='F').resize((size, size), Image.BILINEAR))
            for d in digits])
    images = np.clip(images, 0., 1.)[..., None]
    # Fixed permutation (independent of the run seed) so the split never changes between runs.
    perm = np.random.RandomState(0).permutation(len(images))
    n_test = len(images) // 6
    return images[np.sort(perm[n_test:] if split == 'train' else perm[:n_test])]


def _folder_builder(config, split):
    """All images under config.data.data_dir (every split uses them all): (N, S, S, C) in [0,1]."""
    del split  # A folder of user images has no split.
    data_dir = config.data.get('data_dir', None)
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f'dataset folder not found: config.data.data_dir={data_dir!r}')
    paths = sorted(
            os.path.join(root, f) for root, _, files in os.walk(data_dir) for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise ValueError(f'no {"/".join(IMAGE_EXTENSIONS)} images found in {data_dir}')
    mode = 'L' if config.data.num_channels == 1 else 'RGB'
    images = []
    for p in paths:
        with Image.open(p) as img:
            img = center_crop_resize(img.convert(mode), config.data.image_size)
            images.append(np.asarray(img, dtype=np.float32).reshape(
                    config.data.image_size, config.data.image_size, -1) / 255.)
    return np.stack(images)


def _tfds_dataset(config, name, split, process_index, process_count, shuffle_files, seed):
    """Loads this process's slice of a prepared TFDS dataset (never downloads)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    data_dir = config.data.get('tfds_data_dir', None)
    builder = tfds.builder(name, data_dir=data_dir)
    sub_split = tfds.even_splits(split, n=process_count)[process_index]
    try:
        return builder.as_dataset(
                split=sub_split, shuffle_files=shuffle_files,
                read_config=tfds.ReadConfig(shuffle_seed=seed))
    except (AssertionError, tf.errors.NotFoundError, FileNotFoundError) as e:
        raise FileNotFoundError(
                f'dataset {name} is not prepared in {builder.data_dir}; run `tfds build {name}'
                f'{" --data_dir=" + data_dir if data_dir else ""}` or set '
                f'config.data.tfds_data_dir') from e


def _resize_small_crop(img, size):
    """TF (H, W, C) float image -> (size, size, C): shorter side to size, then centre crop."""
    import tensorflow as tf
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    ratio = size / tf.cast(tf.minimum(h, w), tf.float32)
    new_h = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * ratio), tf.int32))
    new_w = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * ratio), tf.int32))
    img = tf.image.resize(img, [new_h, new_w], antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return img[top:top + size, left:left + size]


def _tfds_image_builder(name, split_names, resize):
    """Builder for a TFDS image dataset; split_names maps 'train'/'test' to TFDS split names."""
    def builder(config, split, process_index, process_count, shuffle, seed):
        import tensorflow as tf
        ds = _tfds_dataset(config, name, split_names['train' if split == 'train' else 'test'],
                                              process_index, process_count, shuffle, seed)
        size = config.data.image_size

        def preprocess(d):
            img = tf.image.convert_image_dtype(d['image'], tf.float32)
            return resize(img, size)
        return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return builder


def _resize_square(img, size):
    """TF (H, W, C) float image -> (size, size, C), antialiased as in score-SDE."""
    import tensorflow as tf
    return tf.image.resize(img, [size, size], antialias=True)


def _tfrecord_builder(config, split, process_index, process_count, shuffle, seed):
    """score-SDE TFRecords (features 'shape' [C,H,W] and raw uint8 'data'), sharded by record."""
    import tensorflow as tf
    del split, shuffle, seed  # These files hold a single split; shuffling happens downstream.
    path = config.data.get('tfrecords_path', None)
    if not path or not tf.io.gfile.glob(path):
        raise FileNotFoundError(f'no TFRecord files at config.data.tfrecords_path={path!r}')
    size = config.data.image_size

    def preprocess(record):
        sample = tf.io.parse_single_example(record, features={
                'shape': tf.io.FixedLenFeature([3], tf.int64),
                'data': tf.io.FixedLenFeature([], tf.string)})
        data = tf.reshape(tf.io.decode_raw(sample['data'], tf.uint8), sample['shape'])
        img = tf.image.convert_image_dtype(tf.transpose(data, (1, 2, 0)), tf.float32)
        return _resize_square(img, size)
    ds = tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(path))).shard(process_count, process_index)
    return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)


def _celeba_hq_builder(config, *args):
    """CelebA-HQ from config.data.tfrecords_path if set, else from TFDS celeb_a_hq/256."""
    if config.data.get('tfrecords_path', None):
        return _tfrecord_builder(config, *args)
    return _tfds_image_builder('celeb_a_hq/256', {'train': 'train', 'test': 'train'},
                                                          _resize_square)(config, *args)


# name -> (backend, builder). numpy builders: (config, split) -> (N, H, W, C) float32 in [0,1];
# tf builders: (config, split, process_index, process_count, shuffle, seed) -> tf.data of
# single (H, W, C) float32 images in [0,1], already restricted to this process's shard.
_DATASETS = {
        'digits': ('numpy', _digits_builder),
        'folder': ('numpy', _folder_builder),
        'cifar10': ('tf', _tfds_image_builder('cifar10', {'train': 'train', 'test': 'test'},
                                                                                    _resize_square)),
        'celeba_hq': ('tf', _celeba_hq_builder),
        'lsun_church': ('tf', _tfds_image_builder(
                'lsun/church_outdoor', {'train': 'train', 'test': 'validation'}, _resize_small_crop)),
        'ffhq': ('tf', _tfrecord_builder),
}


def _postprocess(config, images, train, seed, step, process_index):
    """(B, H, W, C) [0,1] batch -> model space, with flip / dequantization keyed on the step."""
    # The randomness depends only on (seed, process, step) so a resumed run redraws it exactly.
    rng = np.random.default_rng([seed, process_index, step])
    images = np.asarray(images, dtype=np.float32)
    if train and config.data.random_flip:
        flip = rng.random(len(images)) < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    if config.data.uniform_dequantization:
        # As in score-SDE, applied to every split so likelihoods are measured on dequantized data.
        images = (images * 255. + rng.random(images.shape, dtype=np.float32)) / 256.
    return {'image': get_scaler(config.data.centered)(images).astype(np.float32)}


def _numpy_batches(images, local_batch, train, repeat, seed, process_index, start_step):
    """Yields (local_batch, ...) slices of this shard; batch s is a pure function of s."""
    n = len(images)
    if n == 0:
        raise ValueError('this process received an empty shard')

    def perm(epoch):
        if not train:
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


def _tf_batches(ds, local_batch, train, repeat, seed, start_step):
    """Yields (step, numpy batch) from a tf.data dataset of single images."""
    if train:
        ds = ds.shuffle(10000, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(local_batch, drop_remainder=train).skip(start_step).prefetch(2)
    for step, batch in enumerate(ds.as_numpy_iterator(), start=start_step):
        yield step, batch


def get_dataset(config, split, batch_size, *, process_index=0, process_count=1, seed=0,
                                repeat=True, start_step=0):
    """Iterator of {'image': float32 (batch_size // process_count, H, W, C)} in model space."""
    name = config.data.dataset
    if name not in _DATASETS:
        raise ValueError(f'unknown dataset {name!r}; valid: {sorted(_DATASETS)}')
    if batch_size % process_count:
        raise ValueError(f'batch_size {batch_size} is not divisible by process_count '
                                          f'{process_count}')
    local_batch = batch_size // process_count
    train = split == 'train'
    backend, builder = _DATASETS[name]
    if backend == 'numpy':
        images = np.array_split(builder(config, split), process_count)[process_index]
        batches = _numpy_batches(images, local_batch, train, repeat, seed, process_index,
                                                          start_step)
    else:
        ds = builder(config, split, process_index, process_count, train, seed)
        batches = _tf_batches(ds, local_batch, train, repeat, seed, start_step)
    return (_postprocess(config, b, train, seed, step, process_index) for step, b in batches)
