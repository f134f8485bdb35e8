"""layers.GroupNorm: flax's GroupNorm (parameters, values, gradients) written as per-channel sums."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_diffusion.models import layers


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
