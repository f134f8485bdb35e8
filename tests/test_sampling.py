"""The multi-level sampler on the exactly solvable Gaussian case (SPEC section 5).

Tolerance: 20,000 samples of a 16-d Gaussian whose entries have variance <= 0.5 give a Monte-Carlo
relative Frobenius error of the empirical covariance of about 0.02-0.03 (measured: 0.03 for the
full-space sampler with 200 steps, where the discretisation error is of the same order). We require
the subspace sampler to be within max(1.3 x, +0.02) of the full-space sampler's error and under 0.07
absolute. A lift with the wrong variance (sigma^2 only) gives 0.11-0.55 on the same samples.
"""
import dataclasses
import functools

import jax
import numpy as np
import pytest

from gaussian_case import make_case
from subspace_diffusion.core.ode import ODEConfig
from subspace_diffusion.core.pc import PCConfig, split_grid
from subspace_diffusion.core.sampling import SamplerConfig, below_minimum, cost, least_nfe, make_sampler, sample
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import PoolingChain, Subspace, fit_pca_chain

N_SAMPLES = 20_000
CUTOFFS = {1: (0.1,), 2: (0.1, 0.2)}


def _pc(kind, **pc):
    """The PC sampler with score-SDE's default eps for the SDE; `pc`: PCConfig fields."""
    return SamplerConfig('pc', eps=SDE(kind).sampling_eps, pc=PCConfig(**pc))


def _cfg(kind):
    # VE: reverse diffusion + Langevin (score-SDE's VE choice); VP/sub-VP: Euler-Maruyama, no corrector.
    if kind == 've':
        return _pc(kind, num_steps=200, predictor='reverse_diffusion', corrector='langevin', snr=0.16)
    return _pc(kind, num_steps=200, predictor='euler_maruyama', corrector='none')


def _errors(case, x):
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    cov = np.cov(x.T)
    return (np.abs(x.mean(0) - case.m).max(),
            np.linalg.norm(cov - case.cov) / np.linalg.norm(case.cov))


def _run(sde, case, cfg, subspace=None):
    diffusion, fns = case.diffusion(sde, subspace), case.scores(sde, subspace)
    f = jax.jit(lambda key: sample(key, N_SAMPLES, diffusion, fns, cfg)[0])
    return _errors(case, f(jax.random.PRNGKey(0)))


def _pca_chain():
    rng = np.random.default_rng(3)
    q = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    return fit_pca_chain(rng.normal(size=(400, 16)) * np.linspace(3, 0.5, 16) @ q.T, [8, 2])


@functools.lru_cache(maxsize=None)
def _full_errors(kind, chain_name):
    sde = SDE(kind)
    case = _case(chain_name, 2 if chain_name != 'pooling1' else 1)
    return _run(sde, case, _cfg(kind))


def _case(chain_name, levels):
    chain = _pca_chain() if chain_name == 'pca' else PoolingChain((4, 4, 1), levels)
    return make_case(chain, [0.3, 0.6][:levels])


@pytest.mark.parametrize('kind,chain_name', [('ve', 'pooling1'), ('ve', 'pooling2'), ('vp', 'pooling2'),
                                             ('subvp', 'pooling1'), ('vp', 'pca'), ('ve', 'pca')])
def test_subspace_sampler_matches_full_sampler(kind, chain_name):
    levels = 1 if chain_name == 'pooling1' else 2
    sde, case = SDE(kind), _case(chain_name, levels)
    full_mean, full_cov = _full_errors(kind, chain_name)
    mean_err, cov_err = _run(sde, case, _cfg(kind), case.subspace(CUTOFFS[levels]))
    assert full_cov < 0.07 and full_mean < 0.03
    assert cov_err < max(1.3 * full_cov, full_cov + 0.02) and cov_err < 0.07
    assert mean_err < max(1.3 * full_mean, full_mean + 0.01)


@pytest.mark.parametrize('kind', ['ve', 'vp'])
def test_wrong_lift_variance_is_caught(kind):
    # sigma_perp = 0 makes v_k(t) = sigma(t)^2: the alpha^2 sigma_perp^2 term of the lift is missing.
    sde, case = SDE(kind), _case('pooling2', 2)
    _, cov_err = _run(sde, case, _cfg(kind), case.subspace(CUTOFFS[2], sigma_perp=[0.0, 0.0]))
    assert cov_err > 0.1


def test_conditional_langevin_keeps_the_distribution():
    sde, case = SDE('ve'), _case('pooling2', 2)
    cfg = _pc('ve', num_steps=200, cond_langevin_steps=3, cond_snr=0.22)
    mean_err, cov_err = _run(sde, case, cfg, case.subspace(CUTOFFS[2]))
    assert cov_err < 0.07 and mean_err < 0.03


def test_zero_levels_is_the_full_sampler_and_nfe():
    sde, case = SDE('ve'), _case('pooling2', 2)
    cfg = _pc('ve', num_steps=20)
    full = case.diffusion(sde)
    x1, _ = sample(jax.random.PRNGKey(1), 8, full, case.scores(sde), cfg)
    sampler = make_sampler(full, cfg, lambda p: case.scores(sde))
    x2, info = sampler.sample(None, jax.random.PRNGKey(1), 8)
    np.testing.assert_allclose(x2, x1, atol=1e-5)
    # predictor N-1 + corrector N + denoise 1 network calls, each of cost 1
    assert info == {'nfe': sampler.cost.effective_nfe} and info['nfe'] == 19 + 20 + 1
    grid, spans = split_grid(20, sde.sampling_eps, 1.0, (0.3, 0.6))
    sub_nfe = cost(case.diffusion(sde, case.subspace((0.3, 0.6))), cfg).effective_nfe
    # levels cost 1, 1/4, 1/16 of a full call
    n = {k: b - a for k, (a, b) in spans.items()}
    assert sub_nfe == pytest.approx(2 * n[2] / 16 + 2 * n[1] / 4 + 2 * n[0] - 1 + 1)
    # deterministic for a seed
    np.testing.assert_array_equal(sampler.sample(None, jax.random.PRNGKey(1), 8)[0], x2)


@pytest.mark.parametrize('method,per_step', [('ode_heun', 2), ('dpm_solver++', 1)])
def test_least_nfe_is_what_a_budget_of_zero_costs(method, per_step):
    """The API's floor for nfe=: full space, the 2-level chain and each of its levels alone (costs 1, 1/4, 1/16)."""
    sde, case = SDE('ve'), _case('pooling2', 2)
    full, chain = case.diffusion(sde), case.diffusion(sde, case.subspace(CUTOFFS[2]))
    cfg = SamplerConfig(method, eps=sde.sampling_eps, ode=ODEConfig(nfe_budget=0.))
    for diffusion, level, least in [(full, 0, per_step + 1), (chain, 0, per_step * (1 + 1 / 4 + 1 / 16) + 1),
                                    (chain, 1, (per_step + 1) / 4), (chain, 2, (per_step + 1) / 16)]:
        built = make_sampler(diffusion, cfg, lambda p: case.scores(sde), level=level).cost.effective_nfe
        assert least_nfe(diffusion, cfg, level) == built == pytest.approx(least), (diffusion.num_levels, level)
    at = lambda budget: dataclasses.replace(cfg, ode=ODEConfig(nfe_budget=budget))  # noqa: E731
    for level in (0, 1, 2):  # a budget is spent in full-space units on one level too: 8 full calls = 32 level-1 calls
        spent = make_sampler(chain, at(8.), lambda p: case.scores(sde), level=level).cost.effective_nfe
        assert abs(spent - 8.) <= per_step * chain.cost(level), (level, spent)  # rounding to whole steps
    for diffusion in (full, chain):  # eval's and inpainting's budget check keeps the same floor
        least = least_nfe(diffusion, cfg)
        assert below_minimum(diffusion, at(least)) is None
        assert f'one step per stage: {least:.3g} effective NFE' in below_minimum(diffusion, at(least - 0.1))


def test_bad_cutoffs_and_config():
    sde, case = SDE('ve'), _case('pooling2', 2)
    cfg = _pc('ve', num_steps=20)
    for cutoffs, msg in [((0.6, 0.3), 'increasing'), ((0.3, 1.2), 'inside'), ((0.3,), 'one cutoff time per level')]:
        with pytest.raises(ValueError, match=msg):
            case.subspace(cutoffs)
    subspace = case.subspace((0.999, 0.9999))
    with pytest.raises(ValueError, match='no grid point'):
        sample(jax.random.PRNGKey(0), 4, case.diffusion(sde, subspace), case.scores(sde, subspace), cfg)
    with pytest.raises(ValueError, match='statistics are for chain'):
        Subspace(PoolingChain((8, 8, 1), 2), case.stats(), (0.1, 0.2))
    with pytest.raises(ValueError, match='predictor'):
        PCConfig(predictor='heun')
    with pytest.raises(ValueError, match='method'):
        SamplerConfig(method='euler')


@pytest.mark.parametrize('kind,pc', [
    ('vp', {'predictor': 'reverse_diffusion', 'corrector': 'langevin', 'snr': 0.16}),  # VP's scaled Langevin step
    ('subvp', {'predictor': 'reverse_diffusion', 'corrector': 'langevin', 'snr': 0.16, 'scale_langevin': False,
               'n_corrector_steps': 2}),
    ('ve', {'predictor': 'ancestral', 'corrector': 'none'}),
    ('ve', {'predictor': 'none', 'corrector': 'langevin', 'n_corrector_steps': 5}),  # annealed Langevin dynamics
], ids=['vp-reverse-langevin', 'subvp-reverse-2-langevin', 've-ancestral', 've-langevin-only'])
def test_every_predictor_and_corrector_reproduces_the_distribution(kind, pc):
    # Through the 1-level chain (lift included). Measured at 200 steps: covariance errors 0.023-0.042; annealed
    # Langevin alone needs its 5 steps per level (with 1 or 2 the variance lags by orders of magnitude).
    sde, case = SDE(kind), _case('pooling1', 1)
    mean_err, cov_err = _run(sde, case, _pc(kind, num_steps=200, **pc), case.subspace(CUTOFFS[1]))
    assert cov_err < 0.07 and mean_err < 0.03, (mean_err, cov_err)
