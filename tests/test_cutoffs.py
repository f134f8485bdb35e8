"""Orthogonal Fisher divergence on the Gaussian case: ~0 when the complement is isotropic, otherwise equal to its
closed form (SPEC sections 4-5), and the cutoff at 3e-3 equal to the closed form's crossing."""
import jax
import numpy as np
import pytest
from scipy.optimize import brentq

from gaussian_case import dense_basis, make_case
from subspace_diffusion.core.cutoffs import choose_cutoff, fisher_divergence_curve
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import PoolingChain, Subspace, compute_stats

TS = np.linspace(0.01, 1.0, 21)


def _data(case, n=2048, seed=0):
    return np.random.default_rng(seed).multivariate_normal(case.m, case.cov, size=n).astype(np.float32).reshape(
        (n,) + case.chain.shapes[0])


def test_isotropic_pieces_give_zero_divergence():
    sde = SDE('ve')
    # Equal piece variances: the whole complement of V_2 is isotropic too.
    case = make_case(PoolingChain((4, 4, 1), 2), [0.4, 0.4])
    x = _data(case)
    for k in (1, 2):
        d = fisher_divergence_curve(jax.random.PRNGKey(0), sde, case.subspace((0.1, 0.2)), k,
                                    case.level_score(sde, 0), [x[:1024], x[1024:]], TS)
        assert d.max() < 1e-8


def _marginal(kind, t):
    """(alpha(t), sigma(t)) of SPEC section 1's table in float64, default coefficients."""
    if kind == 've':
        return 1.0, 0.01 * (50.0 / 0.01) ** t
    b = 0.1 * t + 0.5 * t ** 2 * (20.0 - 0.1)
    return np.exp(-b / 2), (np.sqrt(1 - np.exp(-b)) if kind == 'vp' else 1 - np.exp(-b))


def _closed_form(kind, m, cov, q, mu, var, t):
    """(D(t), standard deviation of one example's term) for x0 ~ N(m, cov) and the exact score (SPEC sections 4-5).

    With y = x_t - alpha m ~ N(0, C), C = alpha^2 cov + sigma^2 I, and s = -C^-1 y, the residual
    Q s + Q (x_t - alpha mu) / v = M y + b with M = Q (I / v - C^-1), b = alpha Q (m - mu) / v is Gaussian:
    E||.||^2 = tr(M C M^T) + ||b||^2, and its variance is 2 tr(S^2) + 4 b^T S b with S = M C M^T.
    """
    a, sig = _marginal(kind, t)
    d, dim_q = len(m), np.trace(q)
    c = a ** 2 * cov + sig ** 2 * np.eye(d)
    v = a ** 2 * var + sig ** 2
    mm = q @ (np.eye(d) / v - np.linalg.inv(c))
    s = mm @ c @ mm.T
    b = a * q @ (m - mu) / v
    mean = np.trace(s) + b @ b
    return mean * v / dim_q, np.sqrt(2 * np.trace(s @ s) + 4 * b @ s @ b) * v / dim_q


@pytest.mark.parametrize('kind', ['ve', 'vp', 'subvp'])
def test_non_isotropic_piece_equals_the_closed_form_and_its_crossing(kind):
    # An anisotropic W_1 component (x0 stays Gaussian): D(t) is positive, and exactly computable from the
    # covariance; the curve of cutoffs.py, driven by the exact score, must match it within Monte-Carlo error.
    sde = SDE(kind)
    chain = PoolingChain((4, 4, 1), 1)
    case = make_case(chain, [0.3])
    u1 = dense_basis(chain, 1)
    q = np.eye(16) - u1 @ u1.T
    g = np.random.default_rng(5).normal(size=(16, 16))
    case.cov = case.cov + 0.05 * q @ (g @ g.T) @ q
    x = _data(case, n=4096)
    # Statistics measured as the cutoffs job measures them, on other examples of the same distribution.
    stats = compute_stats(chain, [_data(case, n=4096, seed=1)])
    subspace = Subspace(chain, stats, (0.5,))
    mu, var, dim_q = subspace.complement(1)
    mu = np.asarray(mu, np.float64).reshape(-1)
    assert dim_q == 12
    d = fisher_divergence_curve(jax.random.PRNGKey(0), sde, subspace, 1, case.level_score(sde, 0),
                                [x[:2048], x[2048:]], TS)
    exact, sd = np.array([_closed_form(kind, case.m, case.cov, q, mu, var, t) for t in TS]).T
    stderr = sd / np.sqrt(len(x))
    assert exact[0] > 0.5 and exact[-1] < 1e-6  # clearly positive at small t, vanishing at T
    assert np.all(np.abs(d - exact) < 4 * stderr + 1e-9), np.c_[TS, d, exact, stderr]
    # The cutoff at the default threshold: the closed form's own crossing (a root of D(t) = 3e-3 in t),
    # which the 21-point curve's log-linear interpolation finds to within 0.003 (measured: under 1e-3).
    crossing = brentq(lambda t: _closed_form(kind, case.m, case.cov, q, mu, var, t)[0] - 3e-3, TS[0], TS[-1])
    assert 0.3 < crossing < 0.8
    assert abs(choose_cutoff(TS, d, threshold=3e-3) - crossing) < 3e-3
    assert abs(choose_cutoff(TS, exact, threshold=3e-3) - crossing) < 3e-3


def test_choose_cutoff_log_linear():
    ts = np.array([0.0, 1.0])
    d = np.array([1e-1, 1e-5])
    # log D linear in t: D = 1e-1 * 1e-4^t < 1e-3 for t > 0.5
    assert abs(choose_cutoff(ts, d, 1e-3) - 0.5) < 1e-3
    assert choose_cutoff(ts, np.array([1.0, 0.5]), 1e-3) is None
