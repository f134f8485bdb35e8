"""Denoising score matching in level-k coordinates (SPEC section 3, "Training a level-k score model")."""
import jax
import jax.numpy as jnp

from subspace_diffusion.core.sde import SDE, bcast


def dsm_loss(score_fn, sde: SDE, x0, key, t_min: float, reduce: str = 'mean', likelihood_weighting: bool = False):
    """Scalar loss E_t,z lambda(t) ||sigma(t) s(x_t, t) + z||^2 for level coordinates x0 (B, ...).

    t ~ U(t_min, T); `reduce` 'mean' or 'sum' over coordinates;
    likelihood weighting uses lambda = g^2 / sigma^2, otherwise lambda = 1.
    """
    if reduce not in ('mean', 'sum'):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    t_key, z_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (x0.shape[0],), minval=t_min, maxval=sde.T)
    z = jax.random.normal(z_key, x0.shape, x0.dtype)
    sigma = sde.sigma(t)
    score = score_fn(sde.perturb(x0, t, z), t)
    residual = bcast(sigma, score) * score + z
    per_coord = jnp.square(residual).reshape(x0.shape[0], -1)
    per_example = jnp.mean(per_coord, axis=1) if reduce == 'mean' else jnp.sum(per_coord, axis=1)
    if likelihood_weighting:
        per_example = per_example * sde.g2(t) / sigma ** 2
    return jnp.mean(per_example)
