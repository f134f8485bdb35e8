import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaussian_case import make_case
from subspace_diffusion.core.losses import dsm_loss, training_draws
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import PoolingChain


def test_exact_score_minimises_dsm_in_level_coordinates():
    sde = SDE('vp')
    case = make_case(PoolingChain((4, 4, 1), 2), [0.3, 0.6])
    x = np.random.default_rng(0).multivariate_normal(case.m, case.cov, size=4096).astype(np.float32)
    x1 = case.chain.down(jnp.asarray(x).reshape(-1, 4, 4, 1), 1)
    exact = case.level_score(sde, 1)
    draws = training_draws(jax.random.PRNGKey(0), x1, 0.1, sde.T)
    base = dsm_loss(exact, sde, x1, *draws)
    for scale in (0.9, 1.1):
        assert dsm_loss(lambda x, t: scale * exact(x, t), sde, x1, *draws) > base
    shifted = dsm_loss(lambda x, t: exact(x, t) + 0.05, sde, x1, *draws)
    assert shifted > base


def test_reduction_and_weighting():
    sde = SDE('ve')
    x = jnp.ones((8, 4, 4, 2))
    zero = lambda x, t: jnp.zeros_like(x)  # residual is z: E||z||^2 per coordinate = 1
    t, z = training_draws(jax.random.PRNGKey(1), x, 1e-5, sde.T)
    mean = dsm_loss(zero, sde, x, t, z)
    half_sum = dsm_loss(zero, sde, x, t, z, reduce='half_sum')  # the reference's reduce_mean=False
    np.testing.assert_allclose(half_sum, 0.5 * 32 * mean, rtol=1e-5)
    w = dsm_loss(zero, sde, x, t, z, likelihood_weighting=True)
    expect = jnp.mean(jnp.mean(z.reshape(8, -1) ** 2, 1) * sde.g2(t) / sde.sigma(t) ** 2)
    np.testing.assert_allclose(w, expect, rtol=1e-5)
    with pytest.raises(ValueError, match='reduce'):
        dsm_loss(zero, sde, x, t, z, reduce='sum')


def test_training_draws_cover_the_reference_range():
    # The reference: t = u (T - eps) + eps, u ~ U(0, 1), so t ~ U(eps, T); z standard normal like the images.
    x = jnp.zeros((20000, 2))
    t, z = training_draws(jax.random.PRNGKey(2), x, 1e-5, 1.0)
    assert t.shape == (20000,) and z.shape == x.shape
    assert float(t.min()) >= 1e-5 and float(t.max()) <= 1.0
    np.testing.assert_allclose(np.histogram(np.asarray(t), bins=10, range=(0, 1))[0] / 20000, 0.1, atol=0.01)
    np.testing.assert_allclose([float(z.mean()), float(z.std())], [0.0, 1.0], atol=0.02)
    t_k, _ = training_draws(jax.random.PRNGKey(3), x, 0.6, 1.0)  # a subspace level trains from its cutoff
    assert float(t_k.min()) >= 0.6 and float(t_k.max()) <= 1.0
