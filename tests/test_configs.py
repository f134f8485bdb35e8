"""Every file in configs/ runs: its dataset builds, every level trains two steps, a snapshot samples through its chain.

The networks are shrunk by overrides (the full architectures are checked against the reference's
manifest in test_reference_import.py); data, SDE, chain, cutoffs and sampler settings are the config's.
TFDS datasets come from `tfds.testing.mock_data`, IDX folders (Fashion-MNIST, MNIST) are written by the test.
"""
import contextlib
import glob
import importlib
import os

import numpy as np
import pytest
from idx_files import idx_folder
from PIL import Image

from subspace_diffusion.jobs import train
from subspace_diffusion.run import data
from subspace_diffusion.run.settings import Settings, differences

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))

SHRINK = {
    'model.nf': 8, 'model.num_res_blocks': 1, 'model.ch_mult': (1,),
    'training.batch_size': 4, 'training.n_iters': 2, 'training.n_jitted_steps': 1, 'training.log_freq': 1,
    'training.snapshot_freq': 2, 'training.snapshot_freq_for_preemption': 2, 'training.snapshot_sampling': True,
    'training.snapshot_samples': 4, 'sampling.num_steps': 10, 'subspace.train_level': -1,
}


def _shrunk(name, tmp_path):
    config = importlib.import_module(f'configs.{name}').get_config()
    if config.data.dataset in ('fashion_mnist', 'mnist') and config.data.data_dir:  # the real files stay outside
        idx_folder(tmp_path / 'idx', n=(16, 8))
        config.data.data_dir = str(tmp_path / 'idx')
    # Small images with the config's own pooling factor: one U-Net level at the subspace resolution.
    size = 4 * config.subspace.factor ** config.subspace.levels
    for key, value in {**SHRINK, 'data.image_size': size}.items():
        section, field = key.split('.')
        config[section][field] = value
    return config


# Configs that equal another once shrunk (the deep variants differ in depth, the defaults are their CIFAR-10 /
# CelebA-HQ configs): config -> (the config trained in its place, the fields where the full-size configs differ,
# the fields where the shrunk ones still differ). The full architectures are test_reference_import.py's.
SAME_ONCE_SHRUNK = {
    'default_cifar10': ('cifar10_ve_ncsnpp', [], []),
    'default_celebahq': ('celebahq256_ve_ncsnpp', [], []),
    'cifar10_ve_ncsnpp_deep': ('cifar10_ve_ncsnpp', ['model.num_res_blocks', 'subspace.cutoffs', 'training.n_iters'],
                               ['subspace.cutoffs']),
    'cifar10_vp_ddpmpp_deep': ('cifar10_vp_ddpmpp', ['model.num_res_blocks'], []),
    'cifar10_subvp_ddpmpp_deep': ('cifar10_vp_ddpmpp', ['model.num_res_blocks', 'sampling.eps',
                                                        'sampling.scale_langevin', 'sde.kind', 'training.n_iters'],
                                  ['sampling.eps', 'sampling.scale_langevin', 'sde.kind']),
    # Another data set or SDE, the same network and chain once shrunk: its data builds below, the SDE is
    # test_sde.py's and test_sampling.py's (sub-VP on the exact Gaussian), its network test_reference_import.py's.
    'lsun_church_ve_ncsnpp': ('celebahq256_ve_ncsnpp', ['data.category', 'data.dataset', 'sde.sigma_max',
                                                        'subspace.cutoffs'],
                              ['data.category', 'data.dataset', 'sde.sigma_max', 'subspace.cutoffs']),
    'cifar10_subvp_ddpmpp': ('cifar10_vp_ddpmpp', ['sampling.eps', 'sampling.scale_langevin', 'sde.kind'],
                             ['sampling.eps', 'sampling.scale_langevin', 'sde.kind']),
}


def test_every_config_file_is_covered():
    assert len(CONFIGS) >= 11 and 'cifar10_ve_ncsnpp' in CONFIGS and 'quick_digits' in CONFIGS
    assert set(SAME_ONCE_SHRUNK) <= set(CONFIGS)


@pytest.mark.parametrize('name', sorted(SAME_ONCE_SHRUNK))
def test_configs_that_train_as_another_differ_only_where_expected(name, tmp_path):
    other, full_size, shrunk = SAME_ONCE_SHRUNK[name]
    assert other in CONFIGS and other not in SAME_ONCE_SHRUNK  # trained by the test below
    config, config_other = (importlib.import_module(f'configs.{n}').get_config() for n in (name, other))
    assert differences(config.to_dict(), config_other.to_dict()) == full_size
    assert differences(_shrunk(name, tmp_path).to_dict(), _shrunk(other, tmp_path).to_dict()) == shrunk
    settings = Settings.from_config(_shrunk(name, tmp_path))  # and its settings are valid
    if 'data.dataset' in shrunk:
        _assert_builds(settings)


def _assert_builds(settings):
    """One batch of the config's training data (TFDS through mock data)."""
    with _data_context(settings):
        batch = next(data.get_dataset(settings.data, 'train', 4))['image']
    assert batch.shape == (4,) + settings.data.shape and np.isfinite(batch).all()


def _data_context(settings):
    if settings.data.dataset not in ('digits', 'folder') and not settings.data.data_dir:  # TFDS
        tfds = pytest.importorskip('tensorflow_datasets')
        return tfds.testing.mock_data(num_examples=16)
    return contextlib.nullcontext()


@pytest.mark.parametrize('name', [n for n in CONFIGS if n not in SAME_ONCE_SHRUNK])
def test_config_builds_data_trains_and_samples(name, tmp_path):
    settings = Settings.from_config(_shrunk(name, tmp_path))
    _assert_builds(settings)
    with _data_context(settings):
        state = train.train(settings, tmp_path)
    K = settings.subspace.levels
    assert int(state.step) == 2 and set(state.params) == {f'level_{k}' for k in range(K + 1)}
    grid = np.asarray(Image.open(tmp_path / 'samples' / 'step_0000002.png'))
    assert grid.std() > 0  # four samples from the subspace sampler, not a blank image
