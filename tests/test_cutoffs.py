"""Orthogonal Fisher divergence on the Gaussian case: ~0 when the complement is isotropic, positive otherwise."""
import jax
import numpy as np

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


def test_non_isotropic_piece_is_positive_and_falls():
    sde = SDE('vp')
    chain = PoolingChain((4, 4, 1), 1)
    case = make_case(chain, [0.3])
    u1 = dense_basis(chain, 1)
    w = np.eye(16) - u1 @ u1.T
    g = np.random.default_rng(5).normal(size=(16, 16))
    case.cov = case.cov + 0.05 * w @ (g @ g.T) @ w  # anisotropic W_1 component
    x = _data(case)
    stats = compute_stats(chain, [x])
    d = fisher_divergence_curve(jax.random.PRNGKey(0), sde, Subspace(chain, stats, (0.5,)), 1,
                                case.level_score(sde, 0), [x], TS)
    assert d[0] > 0.1
    assert d[-1] < 1e-3
    assert np.all(np.diff(d) < 1e-4)  # falls with t (up to Monte-Carlo noise)
    t = choose_cutoff(TS, d, threshold=3e-3)
    assert TS[0] < t < TS[-1] and np.interp(t, TS, d) < 3e-3 * 1.5


def test_choose_cutoff_log_linear():
    ts = np.array([0.0, 1.0])
    d = np.array([1e-1, 1e-5])
    # log D linear in t: D = 1e-1 * 1e-4^t < 1e-3 for t > 0.5
    assert abs(choose_cutoff(ts, d, 1e-3) - 0.5) < 1e-3
    assert choose_cutoff(ts, np.array([1.0, 0.5]), 1e-3) is None
