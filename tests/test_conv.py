"""The CPU-friendly layers (models/conv.py, layers.GroupNorm) compute what lax's convolution and flax's GroupNorm do."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_diffusion.models import conv, layers


def _lax(x, w, padding):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=conv.DIMENSIONS)


@pytest.mark.parametrize("batch, size, ci, co, k", [(40, 16, 8, 40, 3), (20, 16, 5, 18, 1), (3, 8, 4, 6, 3)])
def test_value_and_both_gradients_equal_lax(batch, size, ci, co, k):
    """Pieces with remainders (40 = 16 + 16 + 8 images and channels), a 1x1 kernel, and a size below MIN_PIXELS."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (batch, size, size, ci))
    w = jax.random.normal(kw, (k, k, ci, co))
    g = jax.random.normal(kg, (batch, size, size, co))
    pads = ((k // 2, k // 2),) * 2
    ours, ours_vjp = jax.vjp(lambda x, w: conv.conv2d(x, w, pads), x, w)
    ref, ref_vjp = jax.vjp(lambda x, w: _lax(x, w, pads), x, w)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_vjp(g), ref_vjp(g)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_forward_mode_and_second_order():
    """jvp (the likelihood's divergence) and grad-of-jvp work through the custom rule and equal lax's."""
    x = jax.random.normal(jax.random.PRNGKey(1), (17, 16, 16, 3))
    w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 20))
    v = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    pads = ((1, 1), (1, 1))

    def derivatives(f):
        out, tangent = jax.jvp(lambda x: f(x, w), (x,), (v,))
        grad_w = jax.grad(lambda w: jnp.sum(jax.jvp(lambda x: f(x, w), (x,), (v,))[1] ** 2))(w)
        return out, tangent, grad_w

    ours = derivatives(lambda x, w: conv.conv2d(x, w, pads))
    ref = derivatives(lambda x, w: _lax(x, w, pads))
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_kernel_gradient_runs_as_pieces_on_cpu():
    """The compiled kernel gradient holds one convolution per piece of <= 16 images x <= 16 output channels."""
    x = jnp.ones((40, 16, 16, 8))
    w = jnp.ones((3, 3, 8, 20))
    pads = ((1, 1), (1, 1))
    hlo = jax.jit(jax.grad(lambda w: conv.conv2d(x, w, pads).sum())).lower(w).as_text()
    pieces = 3 * 2  # ceil(40 / 16) image pieces x ceil(20 / 16) channel pieces
    assert hlo.count("stablehlo.convolution") == pieces


def test_flax_conv_falls_back_for_strides_and_keeps_its_parameters():
    """nn.Conv with our function: stride-2 convolutions go to lax; values and parameter tree equal nn.Conv's."""
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 9, 9, 3))
    for strides in ((1, 1), (2, 2)):
        ours = nn.Conv(5, (3, 3), strides=strides, conv_general_dilated=conv.conv_general_dilated)
        ref = nn.Conv(5, (3, 3), strides=strides)
        params = ref.init(jax.random.PRNGKey(5), x)
        assert jax.tree.structure(ours.init(jax.random.PRNGKey(5), x)) == jax.tree.structure(params)
        np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, groups, dtype", [((3, 8, 8, 16), 4, jnp.float32), ((2, 5, 32), 8, jnp.float32),
                                                  ((2, 4, 4, 8), 2, jnp.bfloat16)])
def test_group_norm_equals_flax(shape, groups, dtype):
    """Same parameters, same values (float32 statistics) as flax's GroupNorm, for images, sequences and bfloat16."""
    x = (3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(6), shape)).astype(dtype)
    ref = nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype)
    params = ref.init(jax.random.PRNGKey(7), x)
    params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.PRNGKey(8), p.shape), params)
    ours = layers.GroupNorm(num_groups=groups)
    assert jax.tree.structure(ours.init(jax.random.PRNGKey(7), x)) == jax.tree.structure(params)
    out = ours.apply(params, x)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref.apply(params, x), np.float32),
                               rtol=tol, atol=tol)
    g = jax.grad(lambda p, x: jnp.sum(jnp.sin(ours.apply(p, x).astype(jnp.float32))), argnums=(0, 1))(params, x)
    h = jax.grad(lambda p, x: jnp.sum(jnp.sin(ref.apply(p, x).astype(jnp.float32))), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(h)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=10 * tol,
                                   atol=10 * tol * float(jnp.abs(b.astype(jnp.float32)).max()))
