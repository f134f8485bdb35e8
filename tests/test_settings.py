"""The settings boundary: every config field is consumed and checked once, and every setting is used by the code."""
import dataclasses
import glob
import importlib
import os
import re

import ml_collections
import pytest

from subspace_diffusion.core.likelihood import Tolerance
from subspace_diffusion.core.ode import ODEConfig
from subspace_diffusion.core.pc import PCConfig
from subspace_diffusion.core.sampling import SamplerConfig
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.models.ncsnpp import Network
from subspace_diffusion.run import settings as settings_module
from subspace_diffusion.run.settings import Settings, field_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))
SECTIONS = [settings_module.Data, settings_module.SubspaceSettings, settings_module.Training, settings_module.Optim,
            settings_module.Eval, Network, SDE, SamplerConfig, PCConfig, ODEConfig, Tolerance]


def _source(exclude):
    files = glob.glob(os.path.join(ROOT, 'subspace_diffusion', '**', '*.py'), recursive=True)
    return '\n'.join(open(f).read() for f in files if os.path.basename(f) not in exclude)


@pytest.mark.parametrize('name', CONFIGS)
def test_every_field_of_every_config_becomes_a_setting(name):
    config = importlib.import_module(f'configs.{name}').get_config()
    settings = Settings.from_config(config)  # raises for a field that no setting declares
    assert settings.data.shape[0] == config.data.image_size and len(field_paths(config)) > 90


def test_every_setting_is_read_by_the_code():
    # Each field of each typed section must be read outside its own definition: a setting nothing reads
    # would be a config field that silently does nothing.
    source = _source(exclude=('settings.py',))
    unused = []
    for cls in SECTIONS:
        for field in dataclasses.fields(cls):
            if not re.search(rf'\.{field.name}\b', source):
                unused.append(f'{cls.__name__}.{field.name}')
    assert not unused, f'settings that no code reads: {unused}'


def test_a_field_nothing_reads_is_an_error():
    config = importlib.import_module('configs.quick_digits').get_config()
    with config.unlocked():
        config.training.warmup_steps = 10  # a typo'd or stale field in a user's config file
    with pytest.raises(ValueError, match=r'config.training.warmup_steps is not a setting of this project .*remove it'):
        Settings.from_config(config)
    config = importlib.import_module('configs.quick_digits').get_config()
    with config.unlocked():
        del config.eval['likelihood_eps']
    with pytest.raises(ValueError, match='config.eval.likelihood_eps is missing'):
        Settings.from_config(config)


def test_types_are_checked_at_the_boundary():
    config = importlib.import_module('configs.quick_digits').get_config()
    config.training.batch_size = 4
    settings = Settings.from_config(config)
    assert isinstance(settings.training.batch_size, int) and settings.sampling.eps == 1e-5
    # A config file may hold any type (overrides are type-checked by ml_collections, files are not).
    config.optim = ml_collections.ConfigDict({**config.optim.to_dict(), 'lr': 'fast'})
    with pytest.raises(ValueError, match=r"config.optim.lr: must be float, got 'fast'"):
        Settings.from_config(config)
