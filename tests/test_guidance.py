"""Class-conditional sampling with classifier-free guidance: the exact two-class case first, then bad input, then a
tiny conditional run end to end.

The exact case (SPEC section 5, per class): two classes, each a Gaussian of the section-5 form on a 2-level pooling
chain of 4x4 images, with its own mean and its own per-piece sigma_perp, equally likely. Their class-conditional
level scores are exact, and so is the unconditional (mixture) score, so the 'network' s(x, t, y) is exact for
y = 0, 1 and 'no label' = 2; with per-class piece statistics every lift is exact too. So at w = 0 each class's
samples must have the class's mean and the per-dimension variance of each piece (W_1, W_2, V_2) up to sampling and
discretisation error. Measured with 3,000 samples a class: mean within 0.024 (0.038 for the adaptive solver) and
variances within 6% for PC (200 steps), Heun and DPM-Solver++ (40 effective NFE) and the adaptive solver, chain
and full space; the tolerances are 0.05-0.06 and 10-15%. Lifting from the pooled statistics instead puts a
piece's variance 130% (class 0) and 36% (class 1) off under DPM-Solver++ (asserted: > 30%). Under guidance w > 0
the samples move away from the other class: the share nearer the requested class's mean than the other's is
0.887 / 0.953 / 0.996 at w = 0 / 1 / 4 in full space, 0.893 / 0.950 / 0.983 on the chain (DPM-Solver++).
"""
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import subspace_diffusion as sd
from subspace_diffusion import api
from subspace_diffusion.core.diffusion import Diffusion
from subspace_diffusion.core.ode import ODEConfig
from subspace_diffusion.core.pc import PCConfig
from subspace_diffusion.core.sampling import SamplerConfig, cost, make_sampler
from subspace_diffusion.core.sde import SDE, bcast
from subspace_diffusion.core.subspaces import PieceStats, PoolingChain, Subspace
from subspace_diffusion.jobs import conditional as conditional_job
from subspace_diffusion.jobs import evaluate, subspace_stats, train
from subspace_diffusion.run import data, statistics
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.networks import Networks
from gaussian_case import dense_basis, make_case
from tiny import one_error_line, run_main, tiny_settings

SDE_VE = SDE('ve', sigma_max=10.0)
CHAIN = PoolingChain((4, 4, 1), 2)
CUTOFFS = (0.5, 0.67)  # noise levels sigma = 0.3 and 1.0: the networks of V_1, V_2 run where the classes overlap
PER_CLASS = 3000


def _classes():
    """Two section-5 Gaussians: class 0 narrow in the first piece and wide in the second, class 1 the other way
    round (a lift from the pooled statistics is wrong for both); their means differ mostly in V_1, where the networks
    run above t_1 (a checkerboard of the 2x2 level, +-0.5), a little in the first piece."""
    cases = make_case(CHAIN, [0.25, 0.6], seed=1), make_case(CHAIN, [0.7, 0.2], seed=2)
    u1 = dense_basis(CHAIN, 1)
    coarse = u1 @ np.array([1., -1., -1., 1.]) / 2
    fine = (np.eye(16) - u1 @ u1.T) @ np.random.default_rng(3).normal(size=16)
    shift = 0.5 * coarse + 0.1 * fine / np.linalg.norm(fine)
    return tuple(dataclasses.replace(case, m=cases[0].m + sign * shift) for case, sign in zip(cases, (1, -1)))


CASES = _classes()
NULL = len(CASES)


def _marginal(case, k):
    """(log density up to a shared constant, score) of class `case`'s level-k marginal at (x (B, ...), t (B,))."""
    u = dense_basis(CHAIN, k)
    mean = jnp.asarray(u.T @ case.m, jnp.float32)
    lam, q = np.linalg.eigh(u.T @ case.cov @ u)
    lam, q = jnp.asarray(lam, jnp.float32), jnp.asarray(q, jnp.float32)

    def fn(x, t):
        b = x.shape[0]
        a, s = SDE_VE.alpha(t)[:, None], SDE_VE.sigma(t)[:, None]
        var = a ** 2 * lam + s ** 2
        r = (x.reshape(b, -1) - a * mean) @ q
        logp = -0.5 * jnp.sum(r ** 2 / var + jnp.log(var), axis=1)
        return logp, -((r / var) @ q.T).reshape(x.shape)

    return fn


def exact_network(k):
    """The exact class-conditional level-k score s(x, t, y): class y's for y < 2, the mixture's for y = 2."""
    parts = [_marginal(case, k) for case in CASES]

    def score(x, t, y):
        logps, scores = zip(*(p(x, t) for p in parts))
        weights = jax.nn.softmax(jnp.stack(logps, axis=1), axis=1)  # equal priors
        out = sum(bcast(weights[:, c], x) * scores[c] for c in range(len(CASES)))
        for c in range(len(CASES)):
            out = jnp.where(bcast(y == c, x), scores[c], out)
        return out

    return score


def mixture_stats() -> PieceStats:
    """Piece statistics of the mixture, with each class's exact ones as its per-class statistics."""
    per_class = [case.stats() for case in CASES]
    dims = np.array([CHAIN.piece_dim(j) for j in range(1, CHAIN.num_levels + 1)])
    mu = [np.mean([s.mu[j] for s in per_class], axis=0) for j in range(CHAIN.num_levels)]
    second = np.mean([s.sigma_perp ** 2 * dims + [np.sum(m ** 2) for m in s.mu] for s in per_class], axis=0)
    sigma_perp = np.sqrt((second - [np.sum(m ** 2) for m in mu]) / dims)
    return PieceStats(mu, sigma_perp, np.zeros(CHAIN.num_levels), CHAIN.signature(),
                      class_mu=[np.stack([s.mu[j] for s in per_class]) for j in range(CHAIN.num_levels)],
                      class_sigma_perp=np.stack([s.sigma_perp for s in per_class]))


def _diffusion(space, per_class=True):
    if space == 'full':
        return Diffusion(SDE_VE, CHAIN.shapes[0])
    stats = mixture_stats() if per_class else mixture_stats().dataset_wide()
    return Diffusion(SDE_VE, CHAIN.shapes[0], Subspace(CHAIN, stats, CUTOFFS))


CONFIGS = {
    'pc': SamplerConfig('pc', eps=1e-5, pc=PCConfig(num_steps=200, snr=0.16)),
    'ode_heun': SamplerConfig('ode_heun', eps=1e-5, ode=ODEConfig(nfe_budget=40.0)),
    'dpm_solver++': SamplerConfig('dpm_solver++', eps=1e-5, ode=ODEConfig(nfe_budget=40.0)),
    'ode': SamplerConfig('ode', eps=1e-5),
}
TOLERANCE = {'pc': (0.05, 0.10), 'ode': (0.05, 0.10), 'ode_heun': (0.06, 0.15), 'dpm_solver++': (0.06, 0.15)}


@functools.cache
def _draw(space, method, w, per_class=True):
    """(samples (2 PER_CLASS, 16), labels): classes 0 and 1 in turn, sampled at guidance w (one key for all)."""
    diffusion = _diffusion(space, per_class)
    cfg = dataclasses.replace(CONFIGS[method], guidance=w)
    sampler = make_sampler(diffusion, cfg, lambda params: [exact_network(k) for k in range(diffusion.num_levels + 1)],
                           num_classes=NULL)
    labels = np.arange(2 * PER_CLASS) % 2
    x, _ = sampler.sample(None, jax.random.PRNGKey(0), 2 * PER_CLASS, labels)
    return np.asarray(x, np.float64).reshape(len(labels), -1), labels


def _pieces():
    """Orthogonal projectors onto W_1, W_2 and V_2 (16 x 16 each)."""
    proj = [u @ u.T for u in (dense_basis(CHAIN, k) for k in range(3))]
    return [proj[0] - proj[1], proj[1] - proj[2], proj[2]]


def _class_errors(x, labels, c):
    """(max |mean error|, max relative error of the per-dimension variance in W_1, W_2, V_2) of class c's samples."""
    case, xc = CASES[c], x[labels == c]
    r = xc - case.m
    got = np.array([np.mean(np.sum((r @ p) ** 2, axis=1)) for p in _pieces()])
    exact = np.array([np.trace(p @ case.cov) for p in _pieces()])
    return np.abs(xc.mean(0) - case.m).max(), np.max(np.abs(got / exact - 1))


@pytest.mark.parametrize('space,method', [('chain', 'pc'), ('chain', 'ode_heun'), ('chain', 'dpm_solver++'),
                                          ('chain', 'ode'), ('full', 'pc')])
def test_unguided_samples_are_each_class(space, method):
    x, labels = _draw(space, method, 0.0)
    mean_tol, var_tol = TOLERANCE[method]
    for c in range(len(CASES)):
        mean_err, var_err = _class_errors(x, labels, c)
        assert mean_err < mean_tol and var_err < var_tol, (c, mean_err, var_err)


def test_dataset_wide_lift_is_wrong_for_each_class():
    x, labels = _draw('chain', 'dpm_solver++', 0.0, per_class=False)
    assert all(_class_errors(x, labels, c)[1] > 0.3 for c in range(len(CASES)))


@pytest.mark.parametrize('space', ['full', 'chain'])
def test_guidance_moves_samples_towards_their_class(space):
    means = np.stack([case.m for case in CASES])
    shares = []
    for w in (0.0, 1.0, 4.0):
        x, labels = _draw(space, 'dpm_solver++', w)
        nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
        shares.append(np.mean(nearest == labels))
    assert shares[0] < 0.92 and shares[0] + 0.04 < shares[1] < shares[2] - 0.02, shares


def test_guidance_doubles_the_counted_cost():
    diffusion = _diffusion('chain')
    for method in ('pc', 'dpm_solver++'):
        plain = cost(diffusion, CONFIGS[method])
        guided = cost(diffusion, dataclasses.replace(CONFIGS[method], guidance=1.0))
        assert guided.effective_nfe == 2 * plain.effective_nfe
        assert guided.calls_per_level == {k: 2 * n for k, n in plain.calls_per_level.items()}
        assert 'guidance' in guided.counts and 'guidance' not in plain.counts
    full = _diffusion('full')
    guided_ode = dataclasses.replace(CONFIGS['ode'], guidance=1.0)
    info = make_sampler(full, guided_ode, lambda params: [exact_network(0)], num_classes=NULL).sample(
        None, jax.random.PRNGKey(0), 4, np.array([0, 1, 2, 0]))[1]
    # the adaptive solver: 6 evaluations a step, 1 at the start and 1 denoising, each twice under guidance
    assert info['nfe'] == 2 * (info['ode_steps'] * 6 + 2)


# --- bad input: one line naming the setting or argument, nothing sampled or written ---

@pytest.mark.parametrize('fields,named', [
    ({'model__num_classes': 10, 'eval__labels': (3, 10)}, 'config.eval.labels: 10 is not a class'),
    ({'eval__labels': (3,)}, 'config.eval.labels: the model is unconditional'),
    ({'sampling__guidance': 1.0}, 'config.sampling.guidance: the model is unconditional'),
    ({'model__num_classes': 10, 'sampling__guidance': -0.5}, 'config.sampling.guidance: must be >= 0'),
    ({'subspace__class_stats': True}, 'config.subspace.class_stats: the model is unconditional'),
    ({'model__num_classes': 10, 'data__dataset': 'folder', 'data__data_dir': '/tmp'}, 'config.model.num_classes'),
])
def test_bad_settings_are_one_line(fields, named):
    with pytest.raises(ValueError) as error:
        tiny_settings(**fields)
    assert str(error.value).startswith(named) and '\n' not in str(error.value)


def test_main_refuses_bad_labels_and_writes_nothing(tmp_path):
    workdir = tmp_path / 'run'
    rc, stderr = run_main('--mode=eval', f'--workdir={workdir}', model__num_classes=10, eval__labels=(3, 10))
    one_error_line(rc, stderr, 'config.eval.labels: 10 is not a class of the model: use classes 0..9')
    assert not workdir.exists()


def _unsampled(**fields):
    """A Model without parameters: every argument check comes before they are used."""
    return api.Model(Experiment.build(tiny_settings(**fields), (0,)), {}, None, 0)


def test_api_refuses_bad_labels_and_guidance():
    plain, labelled = _unsampled(), _unsampled(model__num_classes=10)
    cases = [(plain, {'labels': 3}, 'labels=3: takes None: this model is unconditional'),
             (plain, {'guidance': 1.0}, 'guidance=1.0: takes None: this model is unconditional'),
             (labelled, {'labels': 10}, 'labels=10: takes one class or 2 classes (one per sample) in 0..9'),
             (labelled, {'labels': [1, 2, 3]}, 'labels=[1, 2, 3]: takes one class or 2 classes'),
             (labelled, {'labels': 1.5}, 'labels=1.5: takes one class'),
             (labelled, {'labels': 1, 'guidance': -1.0}, 'guidance=-1.0: takes a weight w >= 0'),
             (labelled, {'labels': 1, 'guidance': float('nan')}, 'guidance=nan: takes a finite number'),
             (labelled, {'guidance': 2.0}, 'guidance=2.0: steers samples towards their labels: pass labels=')]
    for model, kwargs, message in cases:
        with pytest.raises(ValueError) as error:
            model.sample(2, **kwargs)
        assert str(error.value).startswith(message) and '\n' not in str(error.value), (kwargs, str(error.value))


def test_sampler_refuses_labels_it_cannot_use():
    full = _diffusion('full')
    with pytest.raises(ValueError, match='config.sampling.guidance=1 needs a class-conditional model'):
        make_sampler(full, dataclasses.replace(CONFIGS['pc'], guidance=1.0), lambda p: [exact_network(0)])
    plain = make_sampler(full, CONFIGS['pc'], lambda p: [exact_network(0)])
    with pytest.raises(ValueError, match='class labels given to an unconditional model'):
        plain.sample(None, jax.random.PRNGKey(0), 2, np.array([0, 1]))
    labelled = make_sampler(full, CONFIGS['pc'], lambda p: [exact_network(0)], num_classes=NULL)
    with pytest.raises(ValueError, match=r'class label 3 is out of range: the model has classes 0..1 \(2 = no label\)'):
        labelled.sample(None, jax.random.PRNGKey(0), 2, np.array([0, 3]))
    # Guided towards no label is the unlabelled score at twice the cost: refused rather than paid for.
    guided = make_sampler(full, dataclasses.replace(CONFIGS['pc'], guidance=1.0), lambda p: [exact_network(0)],
                          num_classes=NULL)
    with pytest.raises(ValueError, match='config.sampling.guidance=1 steers samples towards their class labels'):
        guided.sample(None, jax.random.PRNGKey(0), 2)


def test_training_refuses_data_labels_outside_the_models_classes():
    """The data's labels are checked as they are read: the first label outside 0..num_classes-1 is named."""
    def stream(labels):
        return iter([{'image': np.zeros((2, 4, 4, 1), np.float32), 'label': np.array(labels, np.int32)}] * 2)

    images, labels = train._host_batch(stream([0, 2]), 2, 3)
    assert images.shape == (2, 2, 4, 4, 1) and labels.tolist() == [[0, 2], [0, 2]]
    for bad, named in (([0, 5], 5), ([-1, 1], -1)):
        with pytest.raises(ValueError, match=rf'class label {named}, outside the model\'s classes 0..2: set '
                                             r'config.model.num_classes'):
            train._host_batch(stream(bad), 2, 3)


def test_class_embedding_only_in_conditional_networks():
    shapes = {0: (8, 8, 1), 1: (16,)}  # an image level (NCSN++) and a vector level (the MLP)
    trees = {}
    for classes in (0, 10):
        networks = Networks.build(tiny_settings(model__num_classes=classes, subspace__kind='pca'), shapes)
        trees[classes] = jax.eval_shape(networks.init_params, jax.random.PRNGKey(0))  # shapes, nothing computed
    for name, width in (('level_0', 32), ('level_1', 512)):
        assert trees[10][name]['class_embedding']['embedding'].shape == (11, width)
        without = {k: v for k, v in trees[10][name].items() if k != 'class_embedding'}
        assert jax.tree.structure(without) == jax.tree.structure(trees[0][name])  # the rest as before


# --- a tiny class-conditional run end to end: training, per-class statistics, guided eval, the Python API ---

@pytest.fixture(scope='module')
def conditional_run(tmp_path_factory):
    """Workdir of a 1-step class-conditional run of both levels of the tiny chain on the digits (labels dropped half
    the time)."""
    workdir = str(tmp_path_factory.mktemp('conditional'))
    train.train(tiny_settings(training__n_iters=1, training__n_jitted_steps=1, model__num_classes=10,
                              training__label_dropout=0.5, subspace__train_level=-1), workdir)
    return workdir


def test_label_dropout_draws_no_label_at_its_rate():
    exp = Experiment.build(tiny_settings(model__num_classes=10, training__label_dropout=0.25), (0,))
    labels = np.arange(8000) % 10
    dropped = np.asarray(exp.drop_labels(jnp.asarray(labels), jax.random.PRNGKey(0)))
    kept = dropped != 10
    assert abs(np.mean(~kept) - 0.25) < 0.02 and np.array_equal(dropped[kept], labels[kept])


def test_per_class_statistics_add_up_to_the_dataset_wide_ones(tmp_path):
    settings = tiny_settings(model__num_classes=10, subspace__class_stats=True)
    stats = subspace_stats.subspace_stats(settings, str(tmp_path))
    _, labels = data.labelled_split(settings.data, 'train')
    share = np.bincount(labels, minlength=10) / len(labels)
    assert stats.num_classes == 10
    np.testing.assert_allclose(np.tensordot(share, stats.class_mu[0], axes=1), stats.mu[0], atol=1e-5)
    dim = stats.class_mu[0][0].size * 3 // 4  # the piece dropped by pooling 2x2
    second = share @ (stats.class_sigma_perp[:, 0] ** 2 * dim + (stats.class_mu[0] ** 2).reshape(10, -1).sum(1))
    np.testing.assert_allclose(np.sqrt(second / dim - np.sum(stats.mu[0] ** 2) / dim), stats.sigma_perp[0],
                               rtol=1e-4)
    exp = Experiment.build(settings, (0, 1))
    assert statistics.load(settings, exp.chain, str(tmp_path)).num_classes == 10  # read back from the file
    assert statistics.load(tiny_settings(model__num_classes=10), exp.chain, str(tmp_path)).num_classes == 0


def test_conditional_run_end_to_end(conditional_run):
    settings = tiny_settings(model__num_classes=10, eval__labels=(3, 7), sampling__guidance=1.0,
                             sampling__method='dpm_solver++', sampling__nfe_budget=6.0, eval__num_samples=6,
                             eval__batch_size=4, eval__enable_bpd=False, subspace__class_stats=True)
    metrics = evaluate.evaluate(settings, conditional_run)[0]  # the chain, lifting by class
    assert metrics['guidance'] == 1.0 and set(metrics['classifier_fd_per_class']) == {'3', '7'}
    assert 0 <= metrics['requested_class_accuracy'] <= 1
    chain = Experiment.build(settings, (0, 1)).diffusion(statistics.load(settings, Experiment.build(
        settings, (0, 1)).chain, conditional_run))
    assert chain.subspace.has_class_stats
    unguided = cost(chain, dataclasses.replace(settings.sampling, guidance=0.))
    assert metrics['nfe_per_sample'] == 2 * unguided.effective_nfe
    folder = os.path.join(conditional_run, 'eval', f'step_{metrics["step"]}')
    assert np.load(os.path.join(folder, 'samples_1.npz'))['labels'].tolist() == [3, 7]
    # Inpainting is steered by the known pixels, not a label: the same settings (guidance 1) inpaint unlabelled.
    inputs = os.path.join(conditional_run, 'inputs')
    os.makedirs(inputs)
    Image.fromarray((data.labelled_split(settings.data, 'test')[0][0, ..., 0] * 255).astype(np.uint8)).save(
        os.path.join(inputs, 'a.png'))
    conditional_job.inpaint(dataclasses.replace(settings, eval=dataclasses.replace(
        settings.eval, cond_input_dir=inputs)), conditional_run)
    assert os.path.exists(os.path.join(conditional_run, 'inpaint', 'a.png'))

    model = sd.load(conditional_run, levels=(0,))
    assert model.num_classes == 10 and model.params['level_0']['class_embedding']['embedding'].shape == (11, 32)
    images = model.sample(2, method='dpm_solver++', nfe=6, labels=[3, 7], guidance=2.0)
    assert images.shape == (2, 8, 8, 1) and np.all((images >= 0) & (images <= 1))
    x, t = jnp.full((2, 8, 8, 1), 0.5), jnp.full((2,), 0.5)
    score = model.experiment.networks.score(model.params, 0)
    assert np.any(np.asarray(score(x, t, jnp.array([3, 3]))) != np.asarray(score(x, t, jnp.array([7, 7]))))
