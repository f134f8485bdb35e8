"""Fixed-step probability-flow ODE samplers (Heun, DPM-Solver++ 2M) on the exactly solvable Gaussian case.

The ODE is deterministic, so the error of a solve at a given budget is measured against the same solver's
solve at a 30x larger budget from the same prior draw and the same lift noise: that removes the Monte-Carlo
error and leaves the discretisation error, whose slope against the budget is the solver's order. Measured
while writing the test (2,000 samples, budgets 16..128): Heun -2.1 to -2.3, DPM-Solver++(2M) -1.5 to -2.3
(it is second order once its multistep history is established; with few steps per stage it is partly first
order), full space and 2-level chain, VE / VP / sub-VP.
"""
import numpy as np
import pytest

from gaussian_case import make_case
from subspace_diffusion.core.ode import ODEConfig, plan, stage_steps
from subspace_diffusion.core.sampling import SamplerConfig, cost
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import PoolingChain

BUDGETS = (16, 32, 64)
CASE = make_case(PoolingChain((4, 4, 1), 2), [0.3, 0.6])


@pytest.mark.parametrize('kind', ['ve', 'vp'])
@pytest.mark.parametrize('space', ['full', 'chain'])
@pytest.mark.parametrize('method,order', [('ode_heun', (-2.6, -1.8)), ('dpm_solver++', (-2.6, -1.3))])
def test_order_of_convergence(kind, space, method, order):
    sde = SDE(kind)
    subspace = CASE.subspace((0.1, 0.2)) if space == 'chain' else None
    reference = CASE.ode_samples(sde, method, 2000, subspace, 2000)
    errors = [np.sqrt(np.mean((CASE.ode_samples(sde, method, b, subspace, 2000) - reference) ** 2)) for b in BUDGETS]
    slope = np.polyfit(np.log(BUDGETS), np.log(errors), 1)[0]
    assert order[0] < slope < order[1], (errors, slope)


@pytest.mark.parametrize('method', ['ode_heun', 'dpm_solver++'])
def test_subspace_solve_reaches_the_same_distribution(method):
    # Fine solves of the 2-level chain and of full space both give the data covariance (8,000 samples:
    # Monte-Carlo error about 0.03).
    sde = SDE('vp')
    for subspace in (None, CASE.subspace((0.1, 0.2))):
        x = CASE.ode_samples(sde, method, 400, subspace, 8000)
        cov_err = np.linalg.norm(np.cov(x.T) - CASE.cov) / np.linalg.norm(CASE.cov)
        assert cov_err < 0.06 and np.abs(x.mean(0) - CASE.m).max() < 0.05, (subspace, cov_err)


def test_budget_rules():
    bounds = [(50.0, 1.0), (1.0, 0.5), (0.5, 0.01)]  # log shares 3.9 : 0.7 : 3.9
    costs = [1 / 16, 1 / 4, 1.0]
    even = stage_steps('ode_heun', ODEConfig(nfe_budget=101, budget_rule='log_sigma'), bounds, costs)
    cheap = stage_steps('ode_heun', ODEConfig(nfe_budget=101, budget_rule='cost'), bounds, costs)
    # Equal density in log sigma: the two wide stages get equal steps; spending by cost: the 16x cheaper
    # stage gets 16x the steps of the full-space one.
    assert even[0] == even[2] and cheap[0] == pytest.approx(16 * cheap[2], rel=0.1)
    for steps in (even, cheap):
        spent = sum(2 * n * c for n, c in zip(steps, costs)) + 1
        assert spent == pytest.approx(101, rel=0.1)
    sde = SDE('ve')
    diffusion = CASE.diffusion(sde, CASE.subspace((0.3, 0.6)))
    laid_out = plan(diffusion, 'dpm_solver++', ODEConfig(nfe_budget=35), sde.sampling_eps)
    nfe = diffusion.effective_nfe(laid_out.calls_per_level) + 1  # + the final denoising call
    assert len(laid_out.grids) == 3 and nfe == pytest.approx(35, rel=0.1)
    with pytest.raises(ValueError, match='budget_rule'):
        ODEConfig(budget_rule='even')


def test_every_method_starts_from_the_same_prior_draw():
    # The probability-flow ODE maps each prior draw to one sample: solvers given the same seed must end on the
    # same points (within their discretisation error), which they only do if they drew the same x_T.
    sde = SDE('vp')
    ends = {method: CASE.ode_samples(sde, method, budget, None, 64)
            for method, budget in (('ode_heun', 400), ('dpm_solver++', 400), ('ode', None))}
    scale = np.sqrt(np.mean(ends['ode'] ** 2))
    for method in ('ode_heun', 'dpm_solver++'):
        assert np.sqrt(np.mean((ends[method] - ends['ode']) ** 2)) < 0.02 * scale, method
    other_seed = CASE.ode_samples(sde, 'ode_heun', 400, None, 64, seed=1)
    assert np.sqrt(np.mean((other_seed - ends['ode']) ** 2)) > 0.5 * scale


def test_the_budget_keeps_a_call_for_denoising_only_when_there_is_one():
    sde = SDE('ve')
    diffusion = CASE.diffusion(sde)
    for denoise, steps in ((True, 19), (False, 20)):
        cfg = SamplerConfig(method='dpm_solver++', eps=sde.sampling_eps, denoise=denoise,
                            ode=ODEConfig(nfe_budget=20))
        assert plan(diffusion, cfg.method, cfg.ode, cfg.eps, denoise).calls_per_level == {0: steps}
        assert cost(diffusion, cfg).effective_nfe == 20
