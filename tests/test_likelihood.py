"""Probability-flow ODE likelihood on the Gaussian case: must equal the analytic log-density of p_eps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaussian_case import make_case
from subspace_diffusion.core.likelihood import (LIKELIHOOD_EPS, SolverStopped, Tolerance, bits_per_dim, dequantize,
                                                log_likelihood, ode_sample, odeint, require_finished)
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import PoolingChain


def _setup(kind, n=64):
    sde = SDE(kind)
    case = make_case(PoolingChain((4, 4, 1), 2), [0.3, 0.6])
    x = np.random.default_rng(1).multivariate_normal(case.m, case.cov, size=n).astype(np.float32)
    # The ODE runs from eps, so the exact answer is the density of x_eps ~ N(alpha m, alpha^2 Sigma + sigma^2 I).
    eps = LIKELIHOOD_EPS
    a, s = float(sde.alpha(eps)), float(sde.sigma(eps))
    r = x / 1.0 - a * case.m
    cov = a ** 2 * case.cov + s ** 2 * np.eye(16)
    ref = -0.5 * (16 * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1] + np.einsum('bi,ij,bj->b', r, np.linalg.inv(cov), r))
    return sde, case, jnp.asarray(x).reshape(n, 4, 4, 1), ref


def _loglik(sde, case, x, trace, subspace, key=0):
    sub = case.subspace((0.1, 0.2)) if subspace else None
    diffusion, fns = case.diffusion(sde, sub), case.scores(sde, sub)
    lp, z, _ = jax.jit(lambda k, x: log_likelihood(k, x, diffusion, fns, trace=trace))(jax.random.PRNGKey(key), x)
    # The ODE ends on the prior, not on the exact p_T = N(alpha_T m, alpha_T^2 Sigma + sigma_T^2 I); swap it in,
    # since for VE the mean m is not negligible against sigma_max.
    a, s = float(sde.alpha(sde.T)), float(sde.sigma(sde.T))
    z = np.asarray(z, np.float64).reshape(z.shape[0], -1)
    cov = a ** 2 * case.cov + s ** 2 * np.eye(16)
    r = z - a * case.m
    exact_pt = -0.5 * (16 * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1] + np.einsum('bi,ij,bj->b', r, np.linalg.inv(cov), r))
    return np.asarray(lp) - np.asarray(sde.prior_logp(jnp.asarray(z))) + exact_pt


@pytest.mark.parametrize('kind', ['ve', 'vp', 'subvp'])
def test_exact_trace_matches_analytic_density(kind):
    sde, case, x, ref = _setup(kind)
    for subspace in (False, True):
        lp = _loglik(sde, case, x, 'exact', subspace)
        np.testing.assert_allclose(lp, ref, atol=5e-3)  # solver tolerance 1e-5 on log p ~ 1-20 in float32


@pytest.mark.parametrize('trace', ['rademacher', 'gaussian'])
def test_hutchinson_is_unbiased(trace):
    sde, case, x, ref = _setup('ve', n=256)
    lp = _loglik(sde, case, x, trace, True)
    # Per-example errors are O(1) (single probe); their mean over 256 examples is within a few std errors of 0.
    err = lp - ref
    assert abs(err.mean()) < 4 * err.std() / np.sqrt(len(err)) + 2e-2


def test_ode_sampling_reproduces_gaussian():
    sde, case, _, _ = _setup('vp')
    sub = case.subspace((0.1, 0.2))
    diffusion, fns = case.diffusion(sde, sub), case.scores(sde, sub)
    xs, stats = jax.jit(lambda k: ode_sample(diffusion.prior(k, 4000), diffusion, fns, Tolerance(),
                                             sde.sampling_eps))(jax.random.PRNGKey(2))
    assert bool(stats.finished)
    xs = np.asarray(xs).reshape(4000, -1)
    assert np.abs(xs.mean(0) - case.m).max() < 0.05
    assert np.linalg.norm(np.cov(xs.T) - case.cov) / np.linalg.norm(case.cov) < 0.08


def test_odeint_accuracy_and_direction():
    y, stats = jax.jit(lambda y: odeint(lambda y, t: -y * t, y, 0.0, 2.0))(jnp.ones(3))
    np.testing.assert_allclose(y, np.exp(-2.0), rtol=1e-4)
    assert bool(stats.finished) and float(stats.t) == pytest.approx(2.0) and int(stats.n_evals) == 6 * int(
        stats.n_steps) + 1
    y, _ = jax.jit(lambda y: odeint(lambda y, t: -y * t, y, 2.0, 0.0))(y)
    np.testing.assert_allclose(y, 1.0, rtol=1e-4)


def test_odeint_says_when_its_step_limit_stopped_it():
    # A stiff decay needs many steps at a tight tolerance: with 5 allowed the solve stops part-way.
    tight = Tolerance(1e-8, 1e-8, max_steps=5)
    y, stats = jax.jit(lambda y: odeint(lambda y, t: -50 * y, y, 0.0, 1.0, tight))(jnp.ones(3))
    assert not bool(stats.finished) and int(stats.n_steps) == 5 and 0 < float(stats.t) < 1
    with pytest.raises(SolverStopped, match=r'step limit \(5 steps\).*raise config.eval.ode_max_steps'):
        require_finished(stats, tight, 'test', 1.0)


def test_bits_per_dim_offsets():
    # A uniform density on [0,1]^d has log p = 0 -> 8 bits/dim; on [-1,1]^d log p = -d ln 2 -> also 8.
    np.testing.assert_allclose(bits_per_dim(jnp.zeros(1), 10, centered=False), 8.0)
    np.testing.assert_allclose(bits_per_dim(-10 * np.log(2) * jnp.ones(1), 10, centered=True), 8.0, rtol=1e-6)
    x = jnp.linspace(0, 1, 256)
    d = dequantize(x, jax.random.uniform(jax.random.PRNGKey(0), x.shape))
    assert jnp.all((d >= x * 255 / 256) & (d < (x * 255 + 1) / 256))


def test_bad_trace():
    sde, case, x, _ = _setup('ve', n=2)
    with pytest.raises(ValueError, match='trace'):
        log_likelihood(jax.random.PRNGKey(0), x, case.diffusion(sde), [case.level_score(sde, 0)], trace='skilling')
