"""Predictor-corrector sampling across a subspace chain, as one traceable program (SPEC section 3).

`pc_sample` is a pure function of a key: one `lax.scan` per stage, stages chained while tracing,
so `jax.jit(pc_sample)` (see `make_sampler`) compiles the whole multi-level sampler once per shape.
Score functions are plain callables `score(x_level, t)` with x_level (B, *chain.shapes[k]), t (B,).
"""
import dataclasses
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion.sde import SDE, _bcast
from subspace_diffusion.subspaces import Chain, PieceStats

PREDICTORS = ('reverse_diffusion', 'euler_maruyama', 'ancestral', 'none')
CORRECTORS = ('langevin', 'none')


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Sampler settings: N grid points, predictor/corrector names, Langevin snr and steps, final denoising."""

    num_steps: int = 1000
    predictor: str = 'reverse_diffusion'
    corrector: str = 'langevin'
    snr: float = 0.16
    n_corrector_steps: int = 1
    cond_langevin_steps: int = 0  # conditional Langevin steps after each lift (SPEC section 3, step 4)
    cond_snr: float = 0.22
    denoise: bool = True
    eps: Optional[float] = None  # defaults to sde.sampling_eps
    scale_langevin: bool = True  # VP / sub-VP: Langevin step times the one-step alpha ratio squared (score-SDE)

    def __post_init__(self):
        if self.predictor not in PREDICTORS:
            raise ValueError(f'sampling.predictor must be one of {PREDICTORS}, got {self.predictor!r}')
        if self.corrector not in CORRECTORS:
            raise ValueError(f'sampling.corrector must be one of {CORRECTORS}, got {self.corrector!r}')
        if self.num_steps < 2:
            raise ValueError(f'sampling.num_steps must be >= 2, got {self.num_steps}')

    @classmethod
    def from_config(cls, sampling, **overrides) -> 'SamplerConfig':
        """From a config's `sampling` section (score-SDE field names)."""
        fields = dict(num_steps=sampling.num_steps, predictor=sampling.predictor, corrector=sampling.corrector,
                      snr=sampling.snr, n_corrector_steps=sampling.n_steps_each,
                      cond_langevin_steps=sampling.cond_langevin_steps,
                      cond_snr=sampling.cond_snr, denoise=sampling.noise_removal, eps=sampling.eps or None,
                      scale_langevin=sampling.scale_langevin)
        fields.update(overrides)
        return cls(**fields)


def check_cutoffs(cutoffs: Sequence[float], num_levels: int, T: float = 1.0):
    """Validate cutoff times t_1 < ... < t_K inside (0, T), one per level."""
    cutoffs = [float(c) for c in cutoffs]
    if len(cutoffs) != num_levels:
        raise ValueError(f'subspace.cutoffs has {len(cutoffs)} value(s) but the chain has {num_levels} level(s): '
                         f'give one cutoff time per level')
    if any(not 0 < c < T for c in cutoffs):
        raise ValueError(f'subspace.cutoffs {cutoffs} must lie strictly inside (0, {T})')
    if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
        raise ValueError(f'subspace.cutoffs {cutoffs} must be strictly increasing (t_1 < t_2 < ... < t_K)')
    return cutoffs


def level_of(t, cutoffs):
    """Active level k of time t: t in (t_k, t_{k+1}] (works on Python floats and traced scalars)."""
    return sum((t > c) * 1 for c in cutoffs)


def lift_variance(sde: SDE, stats: PieceStats, k: int, t):
    """v_k(t) = alpha(t)^2 sigma_perp_k^2 + sigma(t)^2."""
    return sde.alpha(t) ** 2 * float(stats.sigma_perp[k - 1]) ** 2 + sde.sigma(t) ** 2


def implicit_score(sde: SDE, chain: Chain, stats: PieceStats, level_score: Callable, k: int):
    """Full-space score s(x, t) for t in (t_k, t_{k+1}] from the level-k score (SPEC section 3)."""

    def score(x, t):
        s = chain.up(level_score(chain.down(x, k), t), k)
        alpha = sde.alpha(t)
        for j in range(1, k + 1):
            resid = chain.piece(x, j) - _bcast(alpha, x) * stats.mu_full(chain, j)[None]
            s = s - resid / _bcast(lift_variance(sde, stats, j, t), x)
        return s

    return score


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
    alpha_t, sigma_t = sde.alpha(t), sde.sigma(t)
    alpha_s, sigma_s = sde.alpha(s), sde.sigma(s)
    x0 = (x + sigma_t ** 2 * score) / alpha_t
    x_mean = (r * sigma_s ** 2 * x + q * alpha_s * x0) / sigma_t ** 2
    return x_mean + jnp.sqrt(q * sigma_s ** 2 / sigma_t ** 2) * noise, x_mean


def langevin_step(score_fn, x, t, key, snr, n_steps, a, project=None):
    """Langevin corrector at time t (scalar), snr-controlled step; `project` restricts the move to a subspace."""
    vt = jnp.full((x.shape[0],), t)
    proj = project or (lambda v: v)
    for key in jax.random.split(key, n_steps):
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


def split_grid(num_steps: int, eps: float, T: float, cutoffs):
    """Global grid T = tau_0 > ... > tau_{N-1} = eps and, per level, its grid indices [start, stop)."""
    grid = np.linspace(T, eps, num_steps)
    levels = np.array([level_of(t, cutoffs) for t in grid])
    spans = {}
    for k in range(len(cutoffs) + 1):
        idx = np.nonzero(levels == k)[0]
        if idx.size == 0:
            raise ValueError(f'no grid point of the {num_steps}-step grid falls in stage {k} '
                             f'(cutoffs {list(cutoffs)}, eps {eps}): use more sampling.num_steps or move the cutoffs')
        spans[k] = (int(idx[0]), int(idx[-1]) + 1)
    return grid, spans


def effective_nfe(cfg: SamplerConfig, chain: Optional[Chain], spans) -> float:
    """Sum over network calls of n_level / d (SPEC section 3)."""
    d = chain.dim(0) if chain else 1
    dim = (lambda k: chain.dim(k) / d) if chain else (lambda k: 1.0)
    per_point = (cfg.predictor != 'none') + (cfg.corrector != 'none') * cfg.n_corrector_steps
    nfe = sum((stop - start) * per_point * dim(k) for k, (start, stop) in spans.items())
    nfe -= (cfg.predictor != 'none') * dim(0)  # no predictor step after the last grid point
    nfe += sum(cfg.cond_langevin_steps * dim(k - 1) for k in spans if k >= 1)
    return float(nfe + cfg.denoise * dim(0))


def pc_sample(key, batch_size: int, sde: SDE, score_fns: Sequence[Callable], cfg: SamplerConfig,
              chain: Optional[Chain] = None, stats: Optional[PieceStats] = None, cutoffs=(),
              shape=None, sharding=None, dtype=jnp.float32, impose: Optional[Callable] = None):
    """Multi-level PC sampler -> (samples (B, *shapes[0]) in model space, effective NFE).

    score_fns[k] is the level-k score; with no chain (or cutoffs=()) it is the full-space PC sampler.
    `impose(key, x, k, t)`, if given, maps the level-k state at time t after every move (the prior draw,
    each corrector and predictor step, each lift), e.g. to keep a known part (conditional.py).
    """
    impose = impose or (lambda key, x, k, t: x)
    K = chain.num_levels if chain is not None else 0
    cutoffs = check_cutoffs(cutoffs, K, sde.T)
    if len(score_fns) != K + 1:
        raise ValueError(f'need one score function per level (K + 1 = {K + 1}), got {len(score_fns)}')
    if K and stats is None:
        raise ValueError('a subspace sampler needs the piece statistics (subspace.stats_path)')
    if K:
        stats.check(chain)
    shapes = chain.shapes if chain is not None else (tuple(shape),)
    eps = sde.sampling_eps if cfg.eps is None else cfg.eps
    grid, spans = split_grid(cfg.num_steps, eps, sde.T, cutoffs)
    n = cfg.num_steps

    def constrain(x):
        return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)

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
                x = impose(ki, langevin_step(score_fn, x, t, kc, cfg.snr, cfg.n_corrector_steps, a), k, t)
            if cfg.predictor != 'none':
                # The predictor moves the state from t to s.
                x = impose(kj, predictor_step(cfg.predictor, sde, score_fn, x, t, s, kp)[0], k, s)
            return (constrain(x), key), None

        steps = (jnp.asarray(grid[start:stop], dtype), jnp.asarray(grid[start + 1:stop + 1], dtype),
                 langevin_a[start:stop])
        (x, key), _ = jax.lax.scan(body, (x, key), steps)
        return x, key

    key, k0, ki = jax.random.split(key, 3)
    x = constrain(impose(ki, sde.prior_sample(k0, (batch_size,) + tuple(shapes[K]), dtype), K, float(grid[0])))
    for k in range(K, -1, -1):
        start, stop = spans[k]
        last = stop - 1 if k == 0 else stop  # the last grid point gets no predictor step
        x, key = run_stage(k, x, key, start, last)
        if k == 0:
            break
        # Lift to level k-1 at the first grid point of the next stage (exact for the SPEC section 5 case).
        t = float(grid[stop])
        key, kl, kc, ki, kj = jax.random.split(key, 5)
        noise = jax.random.normal(kl, (batch_size,) + tuple(shapes[k - 1]), dtype)
        inject = sde.alpha(t) * jnp.asarray(stats.mu[k - 1])[None] + jnp.sqrt(lift_variance(sde, stats, k, t)) * noise
        x = constrain(impose(ki, chain.up1(x, k) + chain.new_dirs(inject, k), k - 1, t))
        if cfg.cond_langevin_steps:
            x = langevin_step(score_fns[k - 1], x, t, kc, cfg.cond_snr, cfg.cond_langevin_steps, langevin_a[stop],
                              project=functools.partial(chain.new_dirs, k=k))
            x = impose(kj, x, k - 1, t)
    t = float(grid[-1])
    key, kc, ki = jax.random.split(key, 3)
    if cfg.corrector == 'langevin':
        x = impose(ki, langevin_step(score_fns[0], x, t, kc, cfg.snr, cfg.n_corrector_steps, langevin_a[n - 1]), 0, t)
    if cfg.denoise:
        # Tweedie: E[x0 | x_eps] = (x + sigma^2 s) / alpha with the full-space model.
        vt = jnp.full((batch_size,), t)
        x = (x + sde.sigma(t) ** 2 * score_fns[0](x, vt)) / sde.alpha(t)
    return constrain(x), effective_nfe(cfg, chain, spans)


def make_sampler(sde: SDE, cfg: SamplerConfig, build_scores: Callable, chain=None, stats=None, cutoffs=(),
                 shape=None, sharding=None):
    """(jitted `sample(params, key, batch_size) -> x`, effective NFE); `build_scores(params)` -> score_fns.

    Network parameters enter as an argument, not as constants folded into the compiled program.
    """

    def sample(params, key, batch_size):
        return pc_sample(key, batch_size, sde, build_scores(params), cfg, chain, stats, cutoffs, shape, sharding)[0]

    K = chain.num_levels if chain is not None else 0
    eps = sde.sampling_eps if cfg.eps is None else cfg.eps
    _, spans = split_grid(cfg.num_steps, eps, sde.T, check_cutoffs(cutoffs, K, sde.T))
    return jax.jit(sample, static_argnums=2), effective_nfe(cfg, chain, spans)
