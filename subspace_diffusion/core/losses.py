"""Denoising score matching in level-k coordinates (SPEC section 3, "Training a level-k score model")."""
import jax
import jax.numpy as jnp

from subspace_diffusion.core.sde import SDE, bcast

REDUCTIONS = ('mean', 'half_sum')


def training_draws(key, x0, t_min: float, t_max: float):
    """(t (B,) ~ U(t_min, t_max), z ~ N(0, I) shaped as x0 (B, ...)): the randomness of one DSM loss."""
    t_key, z_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (x0.shape[0],), minval=t_min, maxval=t_max)
    return t, jax.random.normal(z_key, x0.shape, x0.dtype)


def dsm_loss(score_fn, sde: SDE, x0, t, z, reduce: str = 'mean', likelihood_weighting: bool = False):
    """Scalar loss mean_b lambda(t_b) R(sigma(t_b) s(x_t, t_b) + z_b) for x0, z (B, ...) and t (B,).

    R is the mean over coordinates ('mean') or half their sum ('half_sum': the reference's reduce_mean=False,
    the Gaussian negative log-likelihood's scale); likelihood weighting uses lambda = g^2 / sigma^2, else 1.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f'reduce must be one of {REDUCTIONS}, got {reduce!r}')
    sigma = sde.sigma(t)
    score = score_fn(sde.perturb(x0, t, z), t)
    residual = bcast(sigma, score) * score + z
    per_coord = jnp.square(residual).reshape(x0.shape[0], -1)
    per_example = jnp.mean(per_coord, axis=1) if reduce == 'mean' else 0.5 * jnp.sum(per_coord, axis=1)
    if likelihood_weighting:
        per_example = per_example * sde.g2(t) / sigma ** 2
    return jnp.mean(per_example)
