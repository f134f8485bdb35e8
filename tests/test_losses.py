import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaussian_case import make_case
from subspace_diffusion.core.losses import dsm_loss
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import PoolingChain


def test_exact_score_minimises_dsm_in_level_coordinates():
    sde = SDE('vp')
    case = make_case(PoolingChain((4, 4, 1), 2), [0.3, 0.6])
    x = np.random.default_rng(0).multivariate_normal(case.m, case.cov, size=4096).astype(np.float32)
    x1 = case.chain.down(jnp.asarray(x).reshape(-1, 4, 4, 1), 1)
    exact = case.level_score(sde, 1)
    key = jax.random.PRNGKey(0)
    base = dsm_loss(exact, sde, x1, key, t_min=0.1)
    for scale in (0.9, 1.1):
        assert dsm_loss(lambda x, t: scale * exact(x, t), sde, x1, key, t_min=0.1) > base
    shifted = dsm_loss(lambda x, t: exact(x, t) + 0.05, sde, x1, key, t_min=0.1)
    assert shifted > base


def test_reduction_and_weighting():
    sde = SDE('ve')
    x = jnp.ones((8, 4, 4, 2))
    zero = lambda x, t: jnp.zeros_like(x)  # residual is z: E||z||^2 per coordinate = 1
    key = jax.random.PRNGKey(1)
    mean = dsm_loss(zero, sde, x, key, 1e-5)
    total = dsm_loss(zero, sde, x, key, 1e-5, reduce='sum')
    np.testing.assert_allclose(total, 32 * mean, rtol=1e-5)
    t = jax.random.uniform(jax.random.split(key)[0], (8,), minval=1e-5, maxval=1.0)
    z = jax.random.normal(jax.random.split(key)[1], x.shape)
    w = dsm_loss(zero, sde, x, key, 1e-5, likelihood_weighting=True)
    expect = jnp.mean(jnp.mean(z.reshape(8, -1) ** 2, 1) * sde.g2(t) / sde.sigma(t) ** 2)
    np.testing.assert_allclose(w, expect, rtol=1e-5)
    with pytest.raises(ValueError, match='reduce'):
        dsm_loss(zero, sde, x, key, 1e-5, reduce='max')
