import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaussian_case import dense_basis
from subspace_diffusion.core.subspaces import (MatrixChain, PoolingChain, Subspace, compute_stats, fit_patch_pca_chain,
                                               fit_pca_chain, make_chain, signature_id)
from subspace_diffusion.run import statistics


def _planted_images(n=600, seed=0):
    # 8x8x2 images whose 2x2 patches live (mostly) in a 2-d subspace of the 8-d patch space.
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    coef = rng.normal(size=(n, 4, 4, 8)) * np.array([3, 2, .05, .05, .05, .05, .05, .05])
    patches = coef @ basis.T
    x = patches.reshape(n, 4, 4, 2, 2, 2).transpose(0, 1, 3, 2, 4, 5).reshape(n, 8, 8, 2)
    return x.astype(np.float32), basis[:, :2]


def _chains():
    imgs, _ = _planted_images()
    rng = np.random.default_rng(1)
    q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    return {
        'pooling': PoolingChain((8, 8, 2), 2),
        'pooling_by_4': PoolingChain((8, 8, 2), 1, factor=4),
        'patch_pca': fit_patch_pca_chain(imgs, 2),
        'pca': fit_pca_chain(imgs, [32, 8]),
        'matrix': MatrixChain((12,), [q[:, :6], np.eye(6)[:, :2]]),
    }


@pytest.mark.parametrize('name', ['pooling', 'pooling_by_4', 'patch_pca', 'pca', 'matrix'])
def test_operator_identities(name):
    chain = _chains()[name]
    us = [dense_basis(chain, k) for k in range(chain.num_levels + 1)]
    for k, u in enumerate(us):
        np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-5)  # orthonormal columns
        p = u @ u.T
        np.testing.assert_allclose(p @ p, p, atol=1e-5)  # idempotent projector
        if k:
            np.testing.assert_allclose(us[k - 1] @ us[k - 1].T @ u, u, atol=1e-5)  # nesting P_{k-1} U_k = U_k
    x = jax.random.normal(jax.random.PRNGKey(0), (3,) + chain.shapes[0])
    for k in range(1, chain.num_levels + 1):
        y = jax.random.normal(jax.random.PRNGKey(k), (3,) + chain.shapes[k])
        # adjointness <U^T x, y> = <x, U y>
        np.testing.assert_allclose(jnp.vdot(chain.down(x, k), y), jnp.vdot(x, chain.up(y, k)), rtol=1e-4)
        np.testing.assert_allclose(chain.down(chain.up(y, k), k), y, atol=1e-5)  # D U = I
        # lift consistency: the level-(k-1) lift of y lands on the same full-space point as the level-k embedding
        np.testing.assert_allclose(chain.up(chain.up1(y, k), k - 1), chain.up(y, k), atol=1e-5)
        # pieces are orthogonal and sum to x - P_K x
    pieces = [chain.piece(x, j) for j in range(1, chain.num_levels + 1)]
    K = chain.num_levels
    np.testing.assert_allclose(sum(pieces), x - chain.up(chain.down(x, K), K), atol=1e-5)
    if K > 1:
        assert abs(float(jnp.vdot(pieces[0], pieces[1]))) < 1e-3


def test_pooling_is_twice_average_pool():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(PoolingChain((4, 4, 1), 1).down(x, 1)[0, :, :, 0], 2 * np.array([[2.5, 4.5], [10.5, 12.5]]))
    np.testing.assert_allclose(PoolingChain((4, 4, 1), 2).down(x, 2)[0, 0, 0, 0], 4 * 7.5)


def test_patch_pca_and_pca_recover_planted_subspace():
    imgs, planted = _planted_images()
    chain = fit_patch_pca_chain(imgs, 1)
    b = np.asarray(chain.bases[0])
    # principal angles between fitted and planted 2-d patch subspaces are ~0
    s = np.linalg.svd(b.T @ planted, compute_uv=False)
    np.testing.assert_allclose(s, 1.0, atol=1e-3)
    rng = np.random.default_rng(0)
    plant = np.linalg.qr(rng.normal(size=(20, 3)))[0]
    data = rng.normal(size=(500, 3)) * [5, 4, 3] @ plant.T + 0.01 * rng.normal(size=(500, 20))
    u = np.asarray(fit_pca_chain(data, [3]).rel_bases[0])
    np.testing.assert_allclose(np.linalg.svd(u.T @ plant, compute_uv=False), 1.0, atol=1e-3)


def test_stats_match_dense_computation(tmp_path):
    chain = PoolingChain((8, 8, 3), 2)
    rng = np.random.default_rng(0)
    data = rng.uniform(size=(96, 8, 8, 3)).astype(np.float32) ** 2
    stats = compute_stats(chain, [data[:40], data[40:]])
    x = data.reshape(96, -1).astype(np.float64)
    us = [dense_basis(chain, k) for k in range(3)]
    for j in (1, 2):
        q = us[j - 1] @ us[j - 1].T - us[j] @ us[j].T
        r = x @ q
        mu = r.mean(0)
        np.testing.assert_allclose(Subspace(chain, stats, (0.3, 0.6)).mu_full(j).reshape(-1), mu, atol=1e-5)
        var = ((r - mu) ** 2).sum(1).mean() / chain.piece_dim(j)
        np.testing.assert_allclose(stats.sigma_perp[j - 1] ** 2, var, rtol=1e-4)
        dist = x - x @ us[j] @ us[j].T
        np.testing.assert_allclose(stats.rms_distance[j - 1], np.sqrt((dist ** 2).sum(1).mean() / (192 - chain.dim(j))),
                                   rtol=1e-5)
    path = tmp_path / 'stats.npz'
    statistics.save(stats, path)
    loaded = statistics.read(path, 'measure them again')
    loaded.check(chain)
    np.testing.assert_array_equal(loaded.sigma_perp, stats.sigma_perp)
    with pytest.raises(ValueError, match='subspace_stats'):
        loaded.check(PoolingChain((8, 8, 3), 1))


def test_fitted_chains_are_told_apart_by_their_bases():
    # Two PCA (and patch-PCA) chains of the same shapes fitted on other data must not share a statistics file.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 4, 4, 1)), rng.normal(size=(64, 4, 4, 1)) * np.linspace(1, 2, 16).reshape(4, 4, 1)
    for kind in ('pca', 'patch_pca'):
        first, second, again = (make_chain(kind, (4, 4, 1), 1, data=d) for d in (a, b, a))
        assert first.signature()['shapes'] == second.signature()['shapes']
        assert signature_id(first.signature()) != signature_id(second.signature())
        assert signature_id(first.signature()) == signature_id(again.signature())


def test_bad_input_errors():
    with pytest.raises(ValueError, match='divisible by 2\\^3 = 8.*at most 2 level'):
        PoolingChain((12, 12, 3), 3)
    with pytest.raises(ValueError, match='divisible'):
        PoolingChain((30, 32, 3), 2)
    with pytest.raises(ValueError, match='orthonormal'):
        MatrixChain((4,), [np.ones((4, 2))])
    with pytest.raises(ValueError, match="subspace.kind"):
        make_chain('wavelet', (8, 8, 1), 1)
    with pytest.raises(ValueError, match='fitted from data'):
        make_chain('pca', (8, 8, 1), 1)
