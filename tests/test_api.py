"""The Python API (the README snippet, run as written), the one sampler factory reaching every sampler user, and
the package's install metadata."""
import os
import re
import shutil
import subprocess
import sys
import tomllib

import jax
import numpy as np
import pytest
from PIL import Image

import subspace_diffusion as sd
from subspace_diffusion import cli
from subspace_diffusion.evaluation import quality
from subspace_diffusion.jobs import conditional, evaluate, train
from subspace_diffusion.run import data, loading, parallel
from subspace_diffusion.run.experiment import Experiment
from tiny import tiny_config, tiny_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = dict(subspace__train_level=-1, training__n_iters=2, training__snapshot_freq=2, eval__num_samples=4,
           eval__batch_size=4, sampling__nfe_budget=8.0, eval__ode_rtol=1e-3, eval__ode_atol=1e-3)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A tiny run of both levels of the 1-level chain (8 -> 4 px); its first checkpoint records its settings."""
    path = tmp_path_factory.mktemp('api')
    train.train(tiny_settings(**RUN), path)
    return path


def test_readme_snippet_runs(workdir):
    readme = open(os.path.join(ROOT, 'README.md')).read()
    section = readme[readme.index('## Python API'):]
    code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
    assert "workdir = 'runs/quick'" in code
    namespace = {}
    exec(code.replace("workdir = 'runs/quick'", f'workdir = {str(workdir)!r}'), namespace)  # noqa: S102
    images, bpd = namespace['images'], namespace['bpd']
    assert images.shape == (16, 8, 8, 1) and 0 <= images.min() and images.max() <= 1
    assert bpd.shape == (16,) and np.isfinite(bpd).all()
    assert namespace['score'].shape == (16, 8, 8, 1) and namespace['coarse'].shape == (16, 4, 4, 1)


def test_api_loads_recorded_settings_and_full_space(workdir):
    model = sd.load(workdir)
    assert model.describe().startswith('1-level pooling chain 8x8x1 -> 4x4x1') and model.step == 2
    full = sd.load(workdir, levels=(0,))
    assert full.describe() == 'full space' and full.effective_nfe() > model.effective_nfe()
    x = model.to_model_space(model.sample(4, steps=6, seed=1))
    # Below the cutoff the implicit score is the full-space network's; above it, level 1's plus the closed form.
    np.testing.assert_allclose(model.score(x, 0.1), full.score(x, 0.1), rtol=1e-5, atol=1e-5)
    assert not np.allclose(model.score(x, 0.9), full.score(x, 0.9), atol=1e-3)
    np.testing.assert_allclose(model.embed(model.project(x, 1), 1), model.embed(model.project(
        model.embed(model.project(x, 1), 1), 1), 1), atol=1e-6)  # a projector


@pytest.fixture(scope='module')
def scorer_cache(tmp_path_factory):
    """The digits classifier and the reference statistics eval scores with, computed once for the module."""
    path = tmp_path_factory.mktemp('scorer')
    quality.Scorer(tiny_settings(**RUN), str(path)).reference()
    return path


@pytest.mark.parametrize('method', ['pc', 'dpm_solver++', 'ode'])
def test_sampling_method_reaches_every_sampler_user(workdir, scorer_cache, tmp_path, method):
    """Snapshot grids, eval, inpainting (nothing known) and the API draw the same samples for the same key."""
    settings = tiny_settings(**RUN, sampling__method=method)
    exp = Experiment.build(settings, (0, 1))
    params = exp.networks.named(loading.load_levels(settings, (0, 1), str(workdir)).params)
    snapshot = train.Snapshots(exp, str(workdir), parallel.make_mesh(), writer=None).sampler
    to_uint8 = lambda x: np.round(np.clip(np.asarray(x), 0, 1) * 255).astype(np.uint8)  # noqa: E731

    # eval: batch 0 of the folder uses fold_in(fold_in(key(seed), 3), 0)
    run = tmp_path / 'eval'
    shutil.copytree(scorer_cache, run)  # the classifier and reference statistics, not computed per method
    evaluate.evaluate(tiny_settings(**RUN, sampling__method=method, eval__level_workdirs=(str(workdir),) * 2), run)
    shard = np.load(run / 'eval' / 'step_2' / 'samples_0.npz')
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(settings.seed), 3), 0)
    expected = to_uint8(snapshot.sample(params, key, 4)[0])
    np.testing.assert_array_equal(shard['samples'], expected)
    assert float(shard['nfe']) > 0

    # the API with seed s uses key(s)
    model = sd.load(workdir, config=tiny_config(**RUN, sampling__method=method))
    np.testing.assert_array_equal(to_uint8(model.sample(4, seed=5)),
                                  to_uint8(snapshot.sample(params, jax.random.PRNGKey(5), 4)[0]))

    # inpainting with a mask that keeps nothing: the unconditional sampler (up to the lift's round-off)
    images = tmp_path / 'images'
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(images / f'{i}.png')
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / 'nothing_known.png')
    inpaint = tiny_settings(**RUN, sampling__method=method, eval__cond_input_dir=str(images),
                            eval__cond_mask=str(tmp_path / 'nothing_known.png'),
                            eval__cond_folder=f'inpaint_{method}')  # one output folder per method: none overwritten
    if method == 'ode':  # an adaptive solve has no grid to impose a measurement on: one clear error
        with pytest.raises(ValueError, match="adaptive 'ode' solver has no fixed grid"):
            conditional.inpaint(inpaint, workdir)
        return
    filled = conditional.inpaint(inpaint, workdir)
    free = snapshot.sample(params, jax.random.fold_in(jax.random.PRNGKey(settings.seed), 0), 4)[0]
    np.testing.assert_allclose(filled, np.clip(data.get_inverse_scaler(False)(np.asarray(free)), 0, 1), atol=1e-4)


def test_methods_give_different_samples(workdir):
    model = sd.load(workdir)
    pc, dpm = model.sample(4, method='pc', seed=0), model.sample(4, method='dpm_solver++', nfe=8, seed=0)
    assert np.abs(pc - dpm).max() > 1e-2  # so the equality above says something about the method


def test_install_metadata():
    meta = tomllib.load(open(os.path.join(ROOT, 'pyproject.toml'), 'rb'))
    module, name = meta['project']['scripts']['subspace-diffusion'].split(':')
    assert (module, name) == ('subspace_diffusion.cli', 'run') and getattr(sys.modules[module], name) is cli.run
    assert 'run()' in open(os.path.join(ROOT, 'main.py')).read()  # main.py runs the same entry point
    assert meta['tool']['setuptools']['dynamic']['dependencies']['file'] == ['requirements.txt']
    assert meta['project']['dynamic'] == ['dependencies'] and 'dependencies' not in meta['project']


CACHE_PROBE = '''
import sys
import jax
events = []
jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
import subspace_diffusion as sd
sd.load(sys.argv[1]).sample(2, method='dpm_solver++', nfe=8, seed=0)
print(events.count('/jax/compilation_cache/cache_hits'))
'''


def test_a_second_api_session_loads_its_programs_from_the_compilation_cache(workdir, tmp_path):
    """sd.load turns on main.py's persistent compilation cache, at the same default place ($XDG_CACHE_HOME)."""
    env = dict(os.environ, JAX_PLATFORMS='cpu', XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=ROOT)
    cache = tmp_path / 'subspace_diffusion' / 'jax'

    def session():
        out = subprocess.run([sys.executable, '-c', CACHE_PROBE, str(workdir)], env=env, capture_output=True,
                             text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        return int(out.stdout.split()[-1]), sorted(os.listdir(cache))

    hits, written = session()
    assert hits == 0 and written  # the first session compiled and kept its programs
    hits, kept = session()
    assert hits >= len(written) and kept == written  # the second loaded them all and compiled nothing worth keeping
