"""Predictor-corrector sampling across a subspace chain, as one traceable program (SPEC section 3).

`pc_sample` is a pure function of a key: one `lax.scan` per stage, stages chained while tracing, so
the jitted sampler (`sampling.make_sampler`) compiles the whole multi-level sampler once per shape.
Score functions are plain callables `score(x_level, t)` with x_level (B, *level shape), t (B,); the
process (SDE, chain with statistics and cutoffs or full space, shape) is a `diffusion.Diffusion`.
"""
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion.core.diffusion import Diffusion

PREDICTORS = ('reverse_diffusion', 'euler_maruyama', 'ancestral', 'none')
CORRECTORS = ('langevin', 'none')


@dataclasses.dataclass(frozen=True)
class PCConfig:
    """Predictor-corrector settings: N grid points, predictor/corrector names, Langevin snr and steps."""

    num_steps: int = 1000
    predictor: str = 'reverse_diffusion'
    corrector: str = 'langevin'
    snr: float = 0.16
    n_corrector_steps: int = 1
    cond_langevin_steps: int = 0  # conditional Langevin steps after each lift (SPEC section 3, step 4)
    cond_snr: float = 0.22
    scale_langevin: bool = True  # VP / sub-VP: Langevin step times the one-step alpha ratio squared (score-SDE)

    def __post_init__(self):
        if self.predictor not in PREDICTORS:
            raise ValueError(f'config.sampling.predictor: must be one of {PREDICTORS}, got {self.predictor!r}')
        if self.corrector not in CORRECTORS:
            raise ValueError(f'config.sampling.corrector: must be one of {CORRECTORS}, got {self.corrector!r}')


def predictor_step(name, sde, score_fn, x, t, s, key):
    """One predictor step from grid time t to s < t (scalars) -> (x, x_mean); x (B, ...)."""
    vt = jnp.full((x.shape[0],), t)
    score = score_fn(x, vt)
    noise = jax.random.normal(key, x.shape, x.dtype)
    if name == 'euler_maruyama':
        dt = s - t
        x_mean = x + sde.reverse_drift(x, vt, score) * dt
        return x_mean + jnp.sqrt(sde.g2(t) * -dt) * noise, x_mean
    # r, q: exact forward kernel s -> t, x_t = r x_s + sqrt(q) z.
    r, q = sde.transition(s, t)
    if name == 'reverse_diffusion':
        # score-SDE's reverse diffusion x_s = x_t - f_i + G_i^2 score + G_i z with the exact discretisation
        # f_i = (r - 1) x, G_i^2 = q; for VE it is score-SDE's formula exactly.
        x_mean = (2 - r) * x + q * score
        return x_mean + jnp.sqrt(q) * noise, x_mean
    # ancestral: exact Gaussian posterior q(x_s | x_t, x0 = Tweedie estimate).
    sigma_t = sde.sigma(t)
    alpha_s, sigma_s = sde.alpha(s), sde.sigma(s)
    x0 = sde.tweedie(x, t, score)
    x_mean = (r * sigma_s ** 2 * x + q * alpha_s * x0) / sigma_t ** 2
    return x_mean + jnp.sqrt(q * sigma_s ** 2 / sigma_t ** 2) * noise, x_mean


class Langevin(NamedTuple):
    """One Langevin corrector move: signal-to-noise ratio, number of steps, step scale a (score-SDE's alpha_i)."""

    snr: float
    n_steps: int
    scale: Any


def langevin_step(score_fn, x, t, key, move: Langevin, project=None):
    """Langevin corrector at time t (scalar), snr-controlled step; `project` restricts the move to a subspace."""
    vt = jnp.full((x.shape[0],), t)
    proj = project or (lambda v: v)
    snr, a = move.snr, move.scale
    for key in jax.random.split(key, move.n_steps):
        grad = proj(score_fn(x, vt))
        noise = proj(jax.random.normal(key, x.shape, x.dtype))
        # Norms averaged over the batch, as in score-SDE: a per-example step size is heavy-tailed in low
        # dimension (n_K can be tiny) and breaks the corrector there.
        axes = tuple(range(1, x.ndim))
        g = jnp.mean(jnp.sqrt(jnp.sum(grad ** 2, axis=axes)))
        n = jnp.mean(jnp.sqrt(jnp.sum(noise ** 2, axis=axes)))
        step = 2 * a * (snr * n / jnp.maximum(g, 1e-12)) ** 2
        x = x + step * grad + jnp.sqrt(2 * step) * noise
    return x


def split_grid(num_steps: int, eps: float, T: float, cutoffs=()):
    """Global grid T = tau_0 > ... > tau_{N-1} = eps and, per level, its grid indices [start, stop)."""
    grid = np.linspace(T, eps, num_steps)
    levels = (grid[:, None] > np.asarray(cutoffs, np.float64).reshape(1, -1)).sum(axis=1)
    spans = {}
    for k in range(len(cutoffs) + 1):
        idx = np.nonzero(levels == k)[0]
        if idx.size == 0:
            raise ValueError(f'no grid point of the {num_steps}-step grid falls in stage {k} '
                             f'(cutoffs {list(cutoffs)}, eps {eps}): use more sampling.num_steps or move the cutoffs')
        spans[k] = (int(idx[0]), int(idx[-1]) + 1)
    return grid, spans


def calls_per_level(cfg: PCConfig, diffusion: Diffusion, eps: float) -> dict:
    """{level k: network calls the PC sampler makes at level k}, the final denoising step not included."""
    _, spans = split_grid(cfg.num_steps, eps, diffusion.sde.T, diffusion.cutoffs)
    per_point = (cfg.predictor != 'none') + (cfg.corrector != 'none') * cfg.n_corrector_steps
    calls = {k: (stop - start) * per_point for k, (start, stop) in spans.items()}
    calls[0] -= cfg.predictor != 'none'  # no predictor step after the last grid point
    for k in spans:
        if k >= 1:  # conditional Langevin after the lift from level k runs at level k - 1
            calls[k - 1] += cfg.cond_langevin_steps
    return calls


def pc_sample(key, x_top, diffusion: Diffusion, score_fns: Sequence[Callable], cfg: PCConfig, eps: float,
              impose: Optional[Callable] = None):
    """Multi-level PC sampler from the prior draw x_top (B, *level-K shape) at T to eps -> (x (B, *shape) at eps in
    model space, eps); score_fns[k]: level-k score; `key` drives every later move.

    `impose(key, x, k, t)`, if given, maps the level-k state at time t after every move (the prior draw,
    each corrector and predictor step, each lift), e.g. to keep a known part (conditional.py).
    """
    impose = impose or (lambda key, x, k, t: x)
    sde, dtype, K = diffusion.sde, diffusion.dtype, diffusion.num_levels
    if len(score_fns) != K + 1:
        raise ValueError(f'need one score function per level (K + 1 = {K + 1}), got {len(score_fns)}')
    grid, spans = split_grid(cfg.num_steps, eps, sde.T, diffusion.cutoffs)
    n = cfg.num_steps

    # score-SDE scales VP Langevin steps by alpha_i = 1 - beta_i; here the one-step alpha ratio squared.
    ratio = sde.transition(jnp.asarray(grid[1:], dtype), jnp.asarray(grid[:-1], dtype))[0] ** 2
    langevin_a = jnp.concatenate([ratio, ratio[-1:]]) if cfg.scale_langevin else jnp.ones(n, dtype)

    def run_stage(k, x, key, start, stop):
        score_fn = score_fns[k]

        def body(carry, step):
            x, key = carry
            key, kc, kp, ki, kj = jax.random.split(key, 5)
            t, s, a = step
            if cfg.corrector == 'langevin':
                x = impose(ki, langevin_step(score_fn, x, t, kc, Langevin(cfg.snr, cfg.n_corrector_steps, a)), k, t)
            if cfg.predictor != 'none':
                # The predictor moves the state from t to s.
                x = impose(kj, predictor_step(cfg.predictor, sde, score_fn, x, t, s, kp)[0], k, s)
            return (diffusion.constrain(x), key), None

        steps = (jnp.asarray(grid[start:stop], dtype), jnp.asarray(grid[start + 1:stop + 1], dtype),
                 langevin_a[start:stop])
        (x, key), _ = jax.lax.scan(body, (x, key), steps)
        return x, key

    key, ki = jax.random.split(key)
    x = diffusion.constrain(impose(ki, x_top, K, float(grid[0])))
    for k in range(K, -1, -1):
        start, stop = spans[k]
        last = stop - 1 if k == 0 else stop  # the last grid point gets no predictor step
        x, key = run_stage(k, x, key, start, last)
        if k == 0:
            break
        # Lift to level k-1 at the first grid point of the next stage (exact for the SPEC section 5 case).
        t = float(grid[stop])
        key, kl, kc, ki, kj = jax.random.split(key, 5)
        x = diffusion.constrain(impose(ki, diffusion.lift(x, k, t, kl), k - 1, t))
        if cfg.cond_langevin_steps:
            x = langevin_step(score_fns[k - 1], x, t, kc, Langevin(cfg.cond_snr, cfg.cond_langevin_steps,
                                                                   langevin_a[stop]),
                              project=functools.partial(diffusion.subspace.chain.new_dirs, k=k))
            x = impose(kj, x, k - 1, t)
    t = float(grid[-1])
    key, kc, ki = jax.random.split(key, 3)
    if cfg.corrector == 'langevin':
        last = Langevin(cfg.snr, cfg.n_corrector_steps, langevin_a[n - 1])
        x = impose(ki, langevin_step(score_fns[0], x, t, kc, last), 0, t)
    return diffusion.constrain(x), t
