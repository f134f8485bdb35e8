"""Our training step equals the reference's: loss, parameters after each Adam step and the EMA after each update.

The fixture tests/data/reference/train_steps.npz was written by the reference's own train step
(benchmarks/make_training_fixture.py: losses.get_step_fn, optimization_manager, models/ema.py) on a tiny NCSN++
of configs/fashion_mnist.py's family. Its initial weights enter our network through the importer's mapping; its
images, times and noise are fed to our compiled step (make_train_step, Experiment.loss, make_optimizer); six
steps cover the warm-up's zero-lr first step and ramp, clipping, the EMA's early decay and its switch to the rate.
"""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import torch_format

from configs import fashion_mnist
from subspace_diffusion.jobs import import_checkpoint, train
from subspace_diffusion.models import convert
from subspace_diffusion.run import loading, parallel, published, train_state
from subspace_diffusion.run.checkpoints import Checkpoints
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Settings

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'reference', 'train_steps.npz')


@pytest.fixture(scope='module')
def reference():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _settings(about, levels=0):
    config = fashion_mnist.get_config()
    net, opt = about['network'], about['optim']
    config.data.image_size, config.data.padding = about['image_size'], 0
    config.model.nf, config.model.ch_mult = net['nf'], tuple(net['ch_mult'])
    config.model.attn_resolutions, config.model.dropout = tuple(net['attn_resolutions']), net['dropout']
    config.model.ema_rate, config.sde.sigma_max = net['ema_rate'], float(net['sigma_max'])
    config.optim.lr, config.optim.warmup, config.optim.grad_clip = opt['lr'], opt['warmup'], opt['grad_clip']
    config.training.batch_size = about['batch']
    config.subspace.levels, config.subspace.cutoffs = levels, (0.5,) * levels
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

    mesh = parallel.make_mesh()
    step = _fixture_step(exp, settings, tx, mesh)
    state = jax.device_put(state, parallel.replicated(mesh))
    for s in range(about['steps']):
        state, metrics = step(state, _batch(reference, s, mesh))
        _assert_equals_the_reference(exp, reference, state, metrics, s)


def _fixture_step(exp, settings, tx, mesh):
    """Our compiled training step, drawing its times and noise from the batch (the fixture's) instead of its key."""
    def loss_fn(p, batch, key, train):
        return exp.loss(p, batch['images'], key, train, draws={0: (batch['t'], batch['z'])})

    return train.make_train_step(loss_fn, tx, mesh, train_state.learning_rate(settings.optim),
                                 settings.training.ema_rate, settings.seed)


def _batch(reference, s, mesh):
    """The images, times and noise of the reference's step s + 1, as one global batch."""
    return jax.tree.map(lambda a: parallel.global_batch(a, mesh, 1),
                        {k: reference[k][s][None] for k in ('images', 't', 'z')})


def _assert_equals_the_reference(exp, reference, state, metrics, s):
    """The loss of step s + 1, and the parameters and EMA after it, are the reference's."""
    np.testing.assert_allclose(metrics['loss'][0], reference['loss'][s], rtol=1e-5, err_msg=f'loss, step {s + 1}')
    got = jax.device_get(state)
    for name, ours, theirs in (('parameters', got.params, _ours(exp, reference, f'model_{s + 1}/')),
                               ('EMA', got.ema_params, _ours(exp, reference, f'ema_{s + 1}/'))):
        share, worst = _agreement(ours, theirs)
        assert share >= 0.99 and worst < 1e-3, (f'{name} after step {s + 1}: {share:.2%} of the elements agree '
                                                f'with the reference, worst difference {worst:.2g}')


def test_an_import_carries_the_reference_adam_state_on(reference, tmp_path):
    # The reference's own checkpoint after step 3 (benchmarks/make_training_fixture.py): imported, our steps 4-6
    # from it equal the reference's, so its Adam moments, update count, warm-up position and EMA count came along.
    about = json.loads(str(reference['about']))
    settings, carry = _settings(about), about['checkpoint_after']
    source = os.path.join(os.path.dirname(FIXTURE), f'train_step{carry}.pth')
    assert import_checkpoint.import_checkpoint(settings, tmp_path, source, 0) == carry
    exp = Experiment.build(settings, (0,))
    tx = train_state.make_optimizer(settings.optim, exp.networks.param_keys)
    mesh = parallel.make_mesh()
    ckpts = Checkpoints(tmp_path, read_only=True)
    state, _ = ckpts.restore(train_state.abstract_state(exp.networks, tx, mesh),
                             train_state.checkpoint_meta(exp.networks))
    ckpts.close()
    count, _, nu = train_state.adam_moments(state.opt_state, 'level_0')
    assert int(state.step) == int(count) == carry and any(np.abs(x).max() > 0 for x in jax.tree.leaves(nu))
    fresh = jax.device_get(state.replace(opt_state=tx.init(state.params)))  # the import before: moments dropped

    step = _fixture_step(exp, settings, tx, mesh)
    for s in range(carry, about['steps']):
        batch = _batch(reference, s, mesh)
        state, metrics = step(state, batch)
        _assert_equals_the_reference(exp, reference, state, metrics, s)
        if s == carry:  # fresh moments would have taken another step
            stepped = jax.device_get(step(fresh, batch)[0]).params
            share, _ = _agreement(stepped, _ours(exp, reference, f'model_{s + 1}/'))
            assert share < 0.5, share


def test_importing_another_level_keeps_the_moments_of_the_levels_in_the_workdir(reference, tmp_path):
    about = json.loads(str(reference['about']))
    settings = _settings(about, levels=1)  # level 1: the same family at 4x4
    carry = about['checkpoint_after']
    import_checkpoint.import_checkpoint(settings, tmp_path, os.path.join(os.path.dirname(FIXTURE),
                                                                         f'train_step{carry}.pth'), 0)
    before = _moments(settings, tmp_path, 0)
    # A level-1 checkpoint in the reference's layout whose optimiser never stepped (written without torch).
    exp = Experiment.build(settings, (0, 1))
    rng = np.random.default_rng(0)
    model = {k: rng.normal(size=shape).astype(np.float32)
             for k, (_, shape) in published.network_layout(exp.networks, 1).items()}
    shadow = [v for k, v in model.items() if k != convert.FOURIER_KEY]
    tensors = iter(range(10 ** 6))
    t = lambda a: torch_format.tensor(a, str(next(tensors)))  # noqa: E731
    torch_format.save(tmp_path / 'level_1.pth', {
        'model': {k: t(v) for k, v in model.items()}, 'ema': {'decay': 0.999, 'shadow_params': [t(v) for v in shadow]},
        'optimizer': {'state': {}, 'param_groups': [{'betas': (0.9, 0.999), 'params': list(range(len(model)))}]},
        'step': 7})
    import_checkpoint.import_checkpoint(settings, tmp_path, str(tmp_path / 'level_1.pth'), 1)
    after = _moments(settings, tmp_path, 0)
    assert int(after[0]) == int(before[0]) == carry
    for a, b in zip(jax.tree.leaves(after[1:]), jax.tree.leaves(before[1:]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(_moments(settings, tmp_path, 1)[0]) == 0  # its own: fresh


def _moments(settings, workdir, key):
    """(count, mu, nu) of level `key` in the workdir's newest checkpoint."""
    networks, _, step = loading.load_parts(settings, workdir)
    return jax.device_get(loading.load_adam_moments(settings, workdir, step, networks)[key])


def test_an_optimiser_that_is_not_the_configs_adam_starts_fresh(reference, tmp_path):
    about = json.loads(str(reference['about']))
    source = os.path.join(os.path.dirname(FIXTURE), f'train_step{about["checkpoint_after"]}.pth')
    _, state_dict, _, _ = published.read_reference(source)
    moments, why = published.read_adam(source, state_dict)
    assert why == '' and moments.count == about['checkpoint_after'] and moments.betas == (0.9, 0.999)
    # The frozen Fourier W gets no gradient, so no state: zero moments; every trained tensor has its own.
    assert not moments.mu[convert.FOURIER_KEY].any() and set(moments.mu) == set(state_dict) - set(convert.BUFFERS)
    optim = _settings(about).optim
    assert import_checkpoint._other_adam(moments, optim) == ''
    assert 'set --config.optim.beta1' in import_checkpoint._other_adam(moments, dataclasses.replace(optim, beta1=0.5))
    # A malformed optimiser state (the file is untrusted) leaves the moments behind, said why, and raises nothing.
    model = {k: torch_format.tensor(np.asarray(v, np.float32), str(i)) for i, (k, v) in enumerate(state_dict.items())}
    for state, reason in (({99: {}}, 'is not the Adam moments of a parameter'),
                          ({0: {'exp_avg': 1, 'exp_avg_sq': 1, 'step': 'x'}}, 'is not the Adam moments'),
                          ('not a dict', 'malformed')):
        torch_format.save(tmp_path / 'bad.pth', {'model': model, 'optimizer': {
            'state': state, 'param_groups': [{'betas': (0.9, 0.999), 'params': list(range(len(model) - 1))}]}})
        got, why = published.read_adam(tmp_path / 'bad.pth', state_dict)
        assert got is None and reason in why, why
    # A checkpoint of a network that was never stepped holds an empty optimiser state: fresh moments, said why.
    untrained = os.path.join(os.path.dirname(FIXTURE), 'vp_8.pth')
    assert published.read_adam(untrained, published.read_reference(untrained)[1]) == (
        None, 'the checkpoint holds no optimiser state (a network that was never stepped, or weights alone)')


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
