"""Orthogonal Fisher divergence of a full-space score and the cutoff it implies (SPEC section 4)."""
from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion import compiler
from subspace_diffusion.core.sde import SDE, bcast
from subspace_diffusion.core.subspaces import Subspace


def fisher_divergence_curve(key, sde: SDE, subspace: Subspace, k: int, full_score: Callable, batches: Iterable,
                            ts) -> np.ndarray:
    """D(t) for each t in ts (SPEC section 4): E ||Q s(x_t, t) + Q (x_t - alpha mu) / v||^2 v / dim Q."""
    mu, var, dim_q = subspace.complement(k)
    chain = subspace.chain
    ts = jnp.asarray(ts, jnp.float32)

    def project(x):
        return x - chain.up(chain.down(x, k), k)

    @compiler.jit
    def batch_terms(key, x0):
        def one_t(key, t):
            vt = jnp.full((x0.shape[0],), t)
            xt = sde.perturb(x0, vt, jax.random.normal(key, x0.shape, x0.dtype))
            v = sde.alpha(t) ** 2 * var + sde.sigma(t) ** 2
            r = project(full_score(xt, vt)) + project(xt - bcast(sde.alpha(vt), xt) * mu[None]) / v
            return jnp.sum(r.reshape(x0.shape[0], -1) ** 2, axis=1) * v / dim_q
        return jax.vmap(one_t)(jax.random.split(key, ts.shape[0]), ts)

    total, count = np.zeros(ts.shape[0]), 0
    for x0 in batches:
        key, sub = jax.random.split(key)
        total += np.asarray(batch_terms(sub, jnp.asarray(x0, jnp.float32)), np.float64).sum(axis=1)
        count += x0.shape[0]
    if count == 0:
        raise ValueError('no data: the batch iterator for the Fisher divergence was empty')
    return total / count


def choose_cutoff(ts, divergence, threshold: float = 3e-3, num_fine: int = 10_000) -> Optional[float]:
    """Smallest t on a fine grid with D(t) < threshold, D interpolated log-linearly; None if it never falls below."""
    ts = np.asarray(ts, np.float64)
    log_d = np.log(np.maximum(np.asarray(divergence, np.float64), 1e-30))
    fine = np.linspace(ts.min(), ts.max(), num_fine)
    below = np.nonzero(np.interp(fine, ts, log_d) < np.log(threshold))[0]
    return float(fine[below[0]]) if below.size else None
