import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_diffusion.core.sde import SDE

KINDS = ['ve', 'vp', 'subvp']


@pytest.mark.parametrize('kind', KINDS)
def test_marginal_variance_solves_the_sde(kind):
    # For dx = f x dt + g dw: d(sigma^2)/dt = 2 f sigma^2 + g^2 and d(alpha)/dt = f alpha.
    sde = SDE(kind)
    with jax.enable_x64(True):
        t = jnp.linspace(0.05, 0.95, 19, dtype=jnp.float64)
        _check_derivatives(sde, t)


def _check_derivatives(sde, t):
    dsig2 = jax.vmap(jax.grad(lambda s: sde.sigma(s) ** 2))(t)
    dalpha = jax.vmap(jax.grad(sde.alpha))(t)
    np.testing.assert_allclose(dsig2, 2 * sde.f(t) * sde.sigma(t) ** 2 + sde.g2(t), rtol=1e-9)
    np.testing.assert_allclose(dalpha, sde.f(t) * sde.alpha(t), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('kind', KINDS)
def test_transition_kernel_composes(kind):
    sde = SDE(kind)
    r1, q1 = sde.transition(0.2, 0.5)
    r2, q2 = sde.transition(0.5, 0.8)
    r, q = sde.transition(0.2, 0.8)
    np.testing.assert_allclose(r1 * r2, r, rtol=1e-5)
    np.testing.assert_allclose(r2 ** 2 * q1 + q2, q, rtol=1e-4)
    assert q > 0


def test_table_values_and_prior():
    ve, vp = SDE('ve'), SDE('vp')
    np.testing.assert_allclose(ve.sigma(1.0), 50.0, rtol=1e-6)
    np.testing.assert_allclose(ve.sigma(0.0), 0.01, rtol=1e-6)
    np.testing.assert_allclose(vp.alpha(1.0) ** 2 + vp.sigma(1.0) ** 2, 1.0, rtol=1e-6)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 2))
    expect = -0.5 * 32 * np.log(2 * np.pi * 2500) - 0.5 * np.sum(np.asarray(x).reshape(3, -1) ** 2, 1) / 2500
    np.testing.assert_allclose(ve.prior_logp(x), expect, rtol=1e-5)


def test_float64_when_enabled():
    with jax.enable_x64(True):
        s = SDE('vp').sigma(jnp.asarray(0.3, jnp.float64))
        assert s.dtype == jnp.float64


def test_bad_kind():
    with pytest.raises(ValueError, match="'ve', 'vp' or 'subvp'"):
        SDE('vpp')
