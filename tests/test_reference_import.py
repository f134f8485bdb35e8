"""Published models: the reference's architecture at every size, torch-free import checked against its outputs.

tests/data/reference/ holds checkpoints and outputs written by the reference implementation itself
(bjing2016/subspace-diffusion, torch 2.13; see its README.md): tiny versions of the published configs
in the release format, and the full-size key/shape manifest of every published config and resolution.
"""
import importlib
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_diffusion.formats import pth
from subspace_diffusion.models import convert
from subspace_diffusion.models.score import get_score_fn
from subspace_diffusion.run import published
from subspace_diffusion.run.checkpoints import Checkpoints
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Settings

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
REF = os.path.join(TESTS, 'data', 'reference')

# Reference config module -> ours.
CONFIGS = {
    've/cifar10_ncsnpp_continuous': 'cifar10_ve_ncsnpp', 've/cifar10_ncsnpp_deep_continuous': 'cifar10_ve_ncsnpp_deep',
    'vp/cifar10_ddpmpp_continuous': 'cifar10_vp_ddpmpp', 'vp/cifar10_ddpmpp_deep_continuous': 'cifar10_vp_ddpmpp_deep',
    'subvp/cifar10_ddpmpp_continuous': 'cifar10_subvp_ddpmpp',
    'subvp/cifar10_ddpmpp_deep_continuous': 'cifar10_subvp_ddpmpp_deep',
    've/celebahq_256_ncsnpp_continuous': 'celebahq256_ve_ncsnpp', 've/church_ncsnpp_continuous': 'lsun_church_ve_ncsnpp',
}
# Fixture -> (our config, the level it is in a chain of that config at its full size, levels, pooling factor).
FIXTURES = {
    've_32': ('cifar10_ve_ncsnpp', 0, 1, 2),
    'vp_16': ('cifar10_vp_ddpmpp', 1, 2, 2),
    'vp_8': ('cifar10_vp_ddpmpp', 2, 2, 2),
    'celebahq_64': ('celebahq256_ve_ncsnpp', 1, 1, 4),
}


def _settings(name, levels=None, factor=None, **overrides):
    return Settings.from_config(_config(name, levels, factor, **overrides))


def _config(name, levels=None, factor=None, **overrides):
    config = importlib.import_module(f'configs.{name}').get_config()
    config.model.nf, config.model.num_res_blocks = 8, 1  # the fixtures' size
    if levels is not None:
        config.subspace.levels, config.subspace.factor = levels, factor
        config.subspace.cutoffs = tuple(0.3 + 0.2 * k for k in range(levels))
    for key, value in overrides.items():
        section, field = key.split('__')
        config[section][field] = value
    return config


def _manifest():
    with open(os.path.join(REF, 'manifest.json')) as f:
        return json.load(f)['entries']


def _content(entry) -> str:
    return json.dumps({k: v for k, v in entry.items() if k != 'config'}, sort_keys=True)


# Reference configs with the same model (sub-VP's are VP's, church's is CelebA-HQ's): every manifest entry whose
# content repeats an earlier one's is checked by comparing our two configs' networks, not by building it again.
FIRST = {}
for _entry in _manifest():
    FIRST.setdefault(_content(_entry), _entry)
_ID = lambda e: f"{e['config']}@{e['image_size']}"  # noqa: E731


@pytest.mark.parametrize('entry', [e for e in _manifest() if FIRST[_content(e)]['config'] != e['config']], ids=_ID)
def test_repeated_reference_models_are_the_same_network_here(entry):
    first = FIRST[_content(entry)]
    ours, theirs = (Settings.from_config(importlib.import_module(f'configs.{CONFIGS[e["config"]]}').get_config())
                    for e in (entry, first))
    assert (ours.network, ours.vector_network) == (theirs.network, theirs.vector_network)


@pytest.mark.parametrize('entry', [e for e in _manifest() if FIRST[_content(e)]['config'] == e['config']], ids=_ID)
def test_full_size_networks_match_the_reference_manifest(entry):
    config = importlib.import_module(f'configs.{CONFIGS[entry["config"]]}').get_config()
    model = Experiment.build(Settings.from_config(config), levels=(0,)).networks.image_model
    size = entry['image_size']
    shapes = jax.eval_shape(lambda k: model.init({'params': k}, jnp.zeros((1, size, size, 3)), jnp.ones(1),
                                                     train=False), jax.random.PRNGKey(0))['params']
    layout = {key: shape for key, (_, shape) in convert.torch_layout(shapes).items()}
    reference = {key: tuple(shape) for key, shape in convert.strip_prefix(dict(entry['state_dict'])).items()
                 if key not in convert.BUFFERS}
    assert layout == reference  # every key and shape, so the same modules in the same places
    assert sum(np.prod(s) for s in layout.values()) == entry['n_params']
    trainable = [s for k, s in convert.strip_prefix(dict(entry['state_dict'])).items()
                 if k not in convert.BUFFERS and k != convert.FOURIER_KEY]
    assert [tuple(s) for s in entry['ema_shadow_shapes']] == [tuple(s) for s in trainable]


def test_attention_placement_options():
    config = importlib.import_module('configs.cifar10_ve_ncsnpp').get_config()
    count = {}
    for placement in ('resolution', 'depth'):
        config.model.attention_placement = placement
        model = Experiment.build(Settings.from_config(config), levels=(0,)).networks.image_model
        shapes = jax.eval_shape(lambda k: model.init({'params': k}, jnp.zeros((1, 16, 16, 3)), jnp.ones(1),
                                                         train=False), jax.random.PRNGKey(0))['params']
        count[placement] = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
    # At 16 px the reference attends at 16 px (128 channels); 'depth' keeps the 32 px network's 8 px blocks.
    assert count == {'resolution': 61_772_035, 'depth': 62_758_915}
    shared = importlib.import_module('configs.cifar10_ve_ncsnpp').get_config()
    shared.subspace.shared_params = True
    with pytest.raises(ValueError, match='attention_placement=depth'):
        Settings.from_config(shared)


@pytest.mark.parametrize('name', sorted(FIXTURES))
def test_imported_networks_reproduce_the_reference_outputs(name):
    config_name, level, levels, factor = FIXTURES[name]
    settings = _settings(config_name, levels, factor)
    networks = Experiment.build(settings, levels=tuple(range(levels + 1))).networks
    io = np.load(os.path.join(REF, f'{name}_io.npz'))
    x, labels = jnp.asarray(io['x']), jnp.asarray(io['labels'])
    for weights in ('ema', 'model'):
        params = published.network_params(networks, os.path.join(REF, f'{name}.pth'), level, weights)
        y = np.asarray(networks.image_model.apply({'params': params}, x, labels, train=False))
        expected = io[f'y_{weights}']
        assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max(), weights
    # The other weights are far off: the test tells which set was loaded.
    assert np.abs(io['y_ema'] - io['y_model']).max() > 0.5
    # Our score wrapper feeds the labels the reference's get_score_fn feeds: sigma(t) for VE, 999 t for VP.
    sde = settings.sde
    if sde.kind == 've':
        t = jnp.log(labels / sde.sigma_min) / np.log(sde.sigma_max / sde.sigma_min)
        expected_score = io['y_ema']
    else:
        t = labels / 999.
        expected_score = -io['y_ema'] / np.asarray(sde.sigma(t))[:, None, None, None]
    params = published.network_params(networks, os.path.join(REF, f'{name}.pth'), level)
    score = get_score_fn(networks.image_model, sde, params)(x, t)
    np.testing.assert_allclose(score, expected_score, rtol=2e-4, atol=1e-5 * np.abs(expected_score).max())


@pytest.mark.parametrize('name', ['vp_8', 've_32'])
def test_legacy_format_copies_import_as_their_zip_originals(name):
    """tests/data/torch/<name>_legacy.pth: torch's own re-save of <name>.pth in its pre-1.6 format."""
    legacy = os.path.join(TESTS, 'data', 'torch', f'{name}_legacy.pth')
    original = os.path.join(REF, f'{name}.pth')
    _assert_identical(pth.load(legacy), pth.load(original))  # all of it: optimiser state, numpy scalars, step
    for weights in ('ema', 'model'):  # what --mode=import reads ...
        _assert_identical(published.read_reference(legacy, weights), published.read_reference(original, weights))
    config_name, level, levels, factor = FIXTURES[name]  # ... and the parameters it makes of them
    networks = Experiment.build(_settings(config_name, levels, factor), levels=tuple(range(levels + 1))).networks
    _assert_identical(published.network_params(networks, legacy, level),
                      published.network_params(networks, original, level))


def _assert_identical(a, b, where='root'):
    """Same structure, types and values; arrays bit for bit, with their dtypes and shapes."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_identical(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f'{where}[{i}]')
    elif isinstance(a, (np.ndarray, jax.Array)):
        a, b = np.asarray(a), np.asarray(b)
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), where
    else:
        assert a == b, where


def test_level_input_offset_of_the_reference_ddpmpp_subspace_networks():
    # The reference feeds its sub-VP 16x16 / 8x8 networks D^k x + alpha (1 or 3) (scaler applied after pooling).
    config = _config('cifar10_subvp_ddpmpp', 2, 2)
    settings = Settings.from_config(config)
    nets = Experiment.build(settings, levels=(0, 1, 2)).networks
    np.testing.assert_allclose(nets.offsets[1], 1.0)
    np.testing.assert_allclose(nets.offsets[2], 3.0)
    assert 0 not in nets.offsets
    params = nets.init_params(jax.random.PRNGKey(0))
    x, t = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3)), jnp.array([0.3, 0.7])
    raw = get_score_fn(nets.image_model, settings.sde, params['level_2'])
    alpha = settings.sde.alpha(t)[:, None, None, None]
    np.testing.assert_allclose(nets.score(params, 2)(x, t), raw(x + 3 * alpha, t), rtol=1e-6)
    config.subspace.scale_after_pooling = False
    assert not Experiment.build(Settings.from_config(config), levels=(0, 1, 2)).networks.offsets
    ve = Experiment.build(_settings('cifar10_ve_ncsnpp', 1, 2), levels=(0, 1))
    assert not ve.networks.offsets  # data in [0, 1]: pooling and scaling commute


def _run(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _flags(workdir, **overrides):
    base = {'model.nf': 8, 'model.num_res_blocks': 1, 'data.image_size': 16, 'subspace.levels': 1,
            'subspace.cutoffs': '(0.4,)', 'sampling.num_steps': 8, 'eval.num_samples': 4, 'eval.batch_size': 4,
            **overrides}
    return ['--config=' + os.path.join(ROOT, 'configs', 'cifar10_vp_ddpmpp.py'), f'--workdir={workdir}',
            *[f'--config.{k}={v}' for k, v in base.items()]]


def test_import_two_levels_then_eval_samples_through_the_chain(tmp_path):
    workdir = tmp_path / 'run'
    images = tmp_path / 'images'
    images.mkdir()
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f'{i}.png')
    data = {'data.dataset': 'folder', 'data.data_dir': str(images)}
    dry = _run('--mode=import', *_flags(workdir), f'--import_from={REF}/vp_16.pth', '--import_level=0',
               '--import_dry_run')
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert 'module.all_modules.0.weight [32, 8] -> level_0/all_modules_0/kernel [8, 32]' in dry.stdout
    assert '270 tensors, 111,507 parameters' in dry.stdout and not workdir.exists()
    for level, name in ((0, 'vp_16'), (1, 'vp_8')):
        out = _run('--mode=import', *_flags(workdir), f'--import_from={REF}/{name}.pth', f'--import_level={level}')
        assert out.returncode == 0, out.stderr[-2000:]
    ckpts = Checkpoints(workdir, read_only=True)
    meta = ckpts.read_meta(ckpts.latest_step())
    ckpts.close()
    assert meta['levels'] == [0, 1] and meta['sources']['1']['file'].endswith('vp_8.pth')
    out = _run('--mode=eval', *_flags(workdir, **data), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(workdir / 'eval' / 'step_2' / 'metrics.json') as f:
        metrics = json.load(f)
    assert metrics['space'].startswith('1-level pooling chain 16x16x3 -> 8x8x3') and metrics['num_samples'] == 4
    # Effective NFE below the full-space count: the 8x8 network ran above the cutoff.
    assert metrics['nfe_per_sample'] < 8


def _malicious_pth(path, payload):
    """A zip laid out like torch.save output whose pickle calls `payload` (a (module, name, arg) triple)."""
    module, name, arg = payload

    class Evil:
        def __reduce__(self):
            return (getattr(importlib.import_module(module), name), (arg,))

    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('archive/data.pkl', pickle.dumps({'model': Evil()}, protocol=2))
        z.writestr('archive/byteorder', 'little')


def test_malicious_pickles_are_refused_before_anything_runs(tmp_path):
    marker = tmp_path / 'pwned'
    for payload, shown in ((('os', 'system', f'touch {marker}'), r'(os|posix)\.system'),
                           (('builtins', 'eval', f'open({str(marker)!r}, "w")'), r'(__builtin__|builtins)\.eval')):
        path = tmp_path / 'evil.pth'
        _malicious_pth(path, payload)
        with pytest.raises(pth.PthError, match=f'refused to load {shown}'):
            pth.load(path)
        out = _run('--mode=import', *_flags(tmp_path / 'w'), f'--import_from={path}', '--import_level=0')
        assert out.returncode != 0 and not marker.exists()
        assert re.search(f'^error: .*refused to load {shown}', out.stderr.strip().splitlines()[-1])


def test_bad_imports_are_one_clear_line(tmp_path):
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(open(os.path.join(REF, 'vp_16.pth'), 'rb').read()[:300_000])
    cases = [
        # (file, level, config overrides, expected last line)
        (truncated, 0, {}, 'a damaged zip archive'),
        (f'{REF}/vp_8.pth', 0, {}, 'is the level-1 network (8x8x3 input), not level 0 (16x16x3): import it with '
                                   '--import_level=1'),
        (f'{REF}/vp_16.pth', 0, {'model.nf': 16}, 'it has nf=8: set --config.model.nf=8'),
        (f'{REF}/ve_32.pth', 0, {}, 'uses the Fourier time embedding'),
        (tmp_path / 'missing.pth', 0, {}, 'missing.pth does not exist'),
    ]
    for path, level, overrides, expected in cases:
        out = _run('--mode=import', *_flags(tmp_path / 'w', **overrides), f'--import_from={path}',
                   f'--import_level={level}')
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode != 0 and last.startswith('error: ') and expected in last, (path, out.stderr[-2000:])
    assert not (tmp_path / 'w' / 'checkpoints').exists() or not os.listdir(tmp_path / 'w' / 'checkpoints' / 'archive')


def test_ve_noise_scales_are_checked(tmp_path):
    config = _config('celebahq256_ve_ncsnpp', 1, 4)
    config.sde.sigma_max = 50.0
    networks = Experiment.build(Settings.from_config(config), levels=(0, 1)).networks
    _, state_dict, _, _ = published.read_reference(os.path.join(REF, 'celebahq_64.pth'))
    with pytest.raises(ValueError, match='trained with sigma_max=348, .* set --config.sde.sigma_max=348'):
        published.check_noise_scales(state_dict, networks)
