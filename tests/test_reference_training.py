"""Our training step equals the reference's: loss, parameters after each Adam step and the EMA after each update.

The fixture tests/data/reference/train_steps.npz was written by the reference's own train step
(benchmarks/make_training_fixture.py: losses.get_step_fn, optimization_manager, models/ema.py) on a tiny NCSN++
of configs/fashion_mnist.py's family. Its initial weights enter our network through the importer's mapping; its
images, times and noise are fed to our compiled step (make_train_step, Experiment.loss, make_optimizer); six
steps cover the warm-up's zero-lr first step and ramp, clipping, the EMA's early decay and its switch to the rate.
"""
import json
import os

import jax
import numpy as np
import pytest

from configs import fashion_mnist
from subspace_diffusion.jobs import train
from subspace_diffusion.models import convert
from subspace_diffusion.run import parallel, published, train_state
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Settings

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'reference', 'train_steps.npz')


@pytest.fixture(scope='module')
def reference():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _settings(about):
    config = fashion_mnist.get_config()
    net, opt = about['network'], about['optim']
    config.data.image_size, config.data.padding = about['image_size'], 0
    config.model.nf, config.model.ch_mult = net['nf'], tuple(net['ch_mult'])
    config.model.attn_resolutions, config.model.dropout = tuple(net['attn_resolutions']), net['dropout']
    config.model.ema_rate, config.sde.sigma_max = net['ema_rate'], float(net['sigma_max'])
    config.optim.lr, config.optim.warmup, config.optim.grad_clip = opt['lr'], opt['warmup'], opt['grad_clip']
    config.training.batch_size = about['batch']
    config.subspace.levels, config.subspace.cutoffs = 0, ()
    return Settings.from_config(config)


def _ours(exp, reference, prefix):
    """Our parameter tree of the fixture's tensors under `prefix` (the frozen Fourier W from the initial weights)."""
    init = convert.strip_prefix({k[5:]: v for k, v in reference.items() if k.startswith('init/')})
    weights = {**init, **convert.strip_prefix({k[len(prefix):]: v for k, v in reference.items()
                                               if k.startswith(prefix)})}
    return {'level_0': published.to_params(weights, published.network_layout(exp.networks, 0))}


def test_training_steps_equal_the_reference(reference):
    about = json.loads(str(reference['about']))
    settings = _settings(about)
    # The time range is the reference's: t ~ U(eps, T) with its eps (tests/test_losses.py: the draws fill it).
    assert (settings.training.eps, settings.sde.T) == (about['eps'], 1.0)
    assert about['eps'] <= reference['t'].min() and reference['t'].max() <= 1.0
    exp = Experiment.build(settings, (0,))
    tx = train_state.make_optimizer(settings.optim, exp.networks.param_keys)
    params = _ours(exp, reference, 'init/')
    state = train_state.TrainState(step=np.int32(0), params=params, ema_params=params, opt_state=tx.init(params))

    def loss_fn(p, batch, key, train):
        return exp.loss(p, batch['images'], key, train, draws={0: (batch['t'], batch['z'])})

    mesh = parallel.make_mesh()
    step = train.make_train_step(loss_fn, tx, mesh, train_state.learning_rate(settings.optim),
                                 settings.training.ema_rate, settings.seed)
    state = jax.device_put(state, parallel.replicated(mesh))
    for s in range(about['steps']):
        batch = {k: reference[k][s][None] for k in ('images', 't', 'z')}
        state, metrics = step(state, jax.tree.map(lambda a: parallel.global_batch(a, mesh, 1), batch))
        got = jax.device_get(state)
        np.testing.assert_allclose(metrics['loss'][0], reference['loss'][s], rtol=1e-5, err_msg=f'loss, step {s + 1}')
        for name, ours, theirs in (('parameters', got.params, _ours(exp, reference, f'model_{s + 1}/')),
                                   ('EMA', got.ema_params, _ours(exp, reference, f'ema_{s + 1}/'))):
            share, worst = _agreement(ours, theirs)
            assert share >= 0.99 and worst < 1e-3, (f'{name} after step {s + 1}: {share:.2%} of the elements agree '
                                                    f'with the reference, worst difference {worst:.2g}')


def _agreement(ours, theirs):
    """(share of elements within 1e-5 + 1e-4 |reference|, largest absolute difference) over two parameter trees.

    Adam divides by the root of the squared-gradient average, so a float32 rounding difference in an element whose
    gradient is near zero grows by orders of magnitude (measured: 39 of 22k elements beyond the tolerance after six
    steps, the largest 1.2e-4 at lr 1e-2); a changed ingredient moves nearly every element (the test's mutations).
    """
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ours)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(theirs)])
    assert a.shape == b.shape
    diff = np.abs(a - b)
    return float(np.mean(diff <= 1e-5 + 1e-4 * np.abs(b))), float(diff.max())


def test_initialisation_follows_the_reference_in_distribution(reference):
    # One draw each, so compare per-tensor spreads: zero tensors (biases) zero on both sides, ones (GroupNorm scales)
    # ones, and every random tensor of 200+ elements with a standard deviation within 25% of the reference's
    # (sampling error about 5%; init_scale 0 layers: ~1e-10 scale on both; twice the variance moves it by 41%).
    about = json.loads(str(reference['about']))
    exp = Experiment.build(_settings(about), (0,))
    theirs = _ours(exp, reference, 'init/')['level_0']
    ours = exp.networks.init_params(jax.random.PRNGKey(0))['level_0']
    compared = 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs), strict=True):
        a, b, name = np.asarray(a), np.asarray(b), jax.tree_util.keystr(path)
        assert a.shape == b.shape, name
        if np.all(b == b.flat[0]):
            np.testing.assert_array_equal(a, b, err_msg=name)
        elif b.size >= 200:
            assert 0.8 < a.std() / b.std() < 1.25, (name, a.std(), b.std())
            compared += 1
    assert compared >= 10
