"""Deterministic probability-flow ODE samplers across a subspace chain: Heun (EDM) and DPM-Solver++(2M).

With y = x / alpha(t) and the noise level r = sigma(t) / alpha(t) as time, the probability-flow ODE of
VE, VP and sub-VP alike is dy/dr = (y - D(y, r)) / r, where D = (x + sigma^2 s(x, t)) / alpha is the
denoised (Tweedie) estimate. Stage k integrates it in level-k coordinates from r(t_{k+1}) down to r(t_k)
with the level-k score: the full ODE restricted to V_k (SPEC section 3). At t_k the state is lifted as
the PC sampler lifts it, `Subspace.lift` (the only randomness after the prior draw); the last stage ends at
eps, and D there is the sample. One `lax.scan` per stage, stages chained while tracing: one program.

The user gives a budget of effective NFE (sum over network calls of n_level / d), not a step count;
`stage_steps` turns it into steps per stage by one of two rules (`budget_rule`):
- 'log_sigma': the same density of steps per unit of log r in every stage (a stage's steps in proportion
  to its share of the log r range), so cheap subspace stages just cost less;
- 'cost': the budget itself split in proportion to each stage's share of the log r range, so cheaper
  stages get more steps (a level with n_k / d = 1/16 gets 16 times the density of full space).
"""
import dataclasses
import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion.sde import SDE
from subspace_diffusion.subspaces import Subspace

SOLVERS = {'ode_heun': 2, 'dpm_solver++': 1}  # method -> network calls per step
RULES = ('log_sigma', 'cost')


@dataclasses.dataclass(frozen=True)
class ODESamplerConfig:
    """A fixed-step probability-flow ODE sampler: solver, effective-NFE budget, how it is split, grid, end."""

    method: str = 'ode_heun'
    nfe_budget: float = 35.0
    budget_rule: str = 'log_sigma'
    rho: float = 7.0  # EDM's time discretisation of r for Heun
    eps: Optional[float] = None  # defaults to sde.sampling_eps
    denoise: bool = True  # end with D(y, r(eps)); otherwise with y itself

    def __post_init__(self):
        if self.method not in SOLVERS:
            raise ValueError(f'config.sampling.method: a fixed-step ODE solver is one of {tuple(SOLVERS)}, '
                             f'got {self.method!r}')
        if self.budget_rule not in RULES:
            raise ValueError(f'config.sampling.budget_rule: must be one of {RULES}, got {self.budget_rule!r}')
        if self.nfe_budget < 2:
            raise ValueError(f'config.sampling.nfe_budget: must be >= 2, got {self.nfe_budget}')
        if self.rho <= 0:
            raise ValueError(f'config.sampling.rho: must be > 0, got {self.rho}')


def stage_bounds(sde: SDE, eps: float, subspace: Optional[Subspace]) -> list:
    """[(r_start, r_end)] of stages K..0: noise levels at T, t_K, ..., t_1, eps (r falls along the way)."""
    times = [sde.T] + list(reversed(subspace.cutoffs if subspace is not None else ())) + [eps]
    with jax.ensure_compile_time_eval():  # a plan made while a sampler is traced
        r = [float(sde.noise_ratio(t)) for t in times]
    return list(zip(r[:-1], r[1:]))


def stage_steps(method: str, budget: float, rule: str, bounds, costs) -> list:
    """Steps of each stage (K..0), at least one, spending about `budget` effective NFE; costs = n_k / d."""
    calls = SOLVERS[method]
    shares = np.array([math.log(hi / lo) for hi, lo in bounds])
    shares /= shares.sum()
    costs = np.asarray(costs, np.float64)
    spend = budget - 1.0  # the final denoising call at level 0
    if rule == 'log_sigma':
        steps = shares * spend / (calls * np.sum(shares * costs))
    else:
        steps = shares * spend / (calls * costs)
    return [max(1, int(round(s))) for s in steps]


def stage_grid(method: str, r_start: float, r_end: float, n: int, rho: float) -> np.ndarray:
    """n + 1 noise levels from r_start down to r_end: EDM's rho schedule for Heun, uniform in log r for DPM."""
    u = np.linspace(0.0, 1.0, n + 1)
    if method == 'ode_heun':
        return (r_start ** (1 / rho) + u * (r_end ** (1 / rho) - r_start ** (1 / rho))) ** rho
    return np.exp(np.log(r_start) + u * (np.log(r_end) - np.log(r_start)))


def effective_nfe(cfg: ODESamplerConfig, steps, costs) -> float:
    """Sum over network calls of n_level / d for `steps` per stage (K..0) of costs n_k / d."""
    return float(sum(SOLVERS[cfg.method] * n * c for n, c in zip(steps, costs)) + cfg.denoise)


def plan(sde: SDE, cfg: ODESamplerConfig, subspace: Optional[Subspace]):
    """(grids per stage K..0, steps per stage, effective NFE) for the budget."""
    eps = sde.sampling_eps if cfg.eps is None else cfg.eps
    bounds = stage_bounds(sde, eps, subspace)
    K = len(bounds) - 1
    costs = [subspace.chain.dim(k) / subspace.chain.dim(0) for k in range(K, -1, -1)] if K else [1.0]
    steps = stage_steps(cfg.method, cfg.nfe_budget, cfg.budget_rule, bounds, costs)
    grids = [stage_grid(cfg.method, hi, lo, n, cfg.rho) for (hi, lo), n in zip(bounds, steps)]
    return grids, steps, effective_nfe(cfg, steps, costs)


def ode_solve(key, batch_size: int, sde: SDE, score_fns: Sequence[Callable], cfg: ODESamplerConfig,
              subspace: Optional[Subspace] = None, shape=None, sharding=None, dtype=jnp.float32):
    """Fixed-step probability-flow ODE sample across the chain -> (samples (B, *shapes[0]) in model space, NFE)."""
    K = subspace.num_levels if subspace is not None else 0
    if len(score_fns) != K + 1:
        raise ValueError(f'need one score function per level (K + 1 = {K + 1}), got {len(score_fns)}')
    shapes = subspace.chain.shapes if subspace is not None else (tuple(shape),)
    grids, _, nfe = plan(sde, cfg, subspace)

    def constrain(x):
        return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)

    def denoiser(k):
        def d(y, r):
            t = sde.t_of_noise_ratio(r)
            alpha, sigma = sde.alpha(t), sde.sigma(t)
            x = alpha * y
            return (x + sigma ** 2 * score_fns[k](x, jnp.full((x.shape[0],), t))) / alpha
        return d

    def run_stage(k, y, grid):
        d = denoiser(k)

        def heun(y, step):
            r, r_next = step
            slope = (y - d(y, r)) / r
            y_euler = y + (r_next - r) * slope
            slope_next = (y_euler - d(y_euler, r_next)) / r_next
            return constrain(y + (r_next - r) * (slope + slope_next) / 2), None

        def dpm(carry, step):
            y, d_prev, h_prev = carry
            r, r_next, first = step
            d_now = d(y, r)
            h = jnp.log(r / r_next)
            q = h_prev / h  # the previous step's length in units of this one
            d_mix = jnp.where(first, d_now, (1 + 1 / (2 * q)) * d_now - d_prev / (2 * q))
            y = (r_next / r) * y + (1 - r_next / r) * d_mix
            return (constrain(y), d_now, h), None

        pairs = (jnp.asarray(grid[:-1], dtype), jnp.asarray(grid[1:], dtype))
        if cfg.method == 'ode_heun':
            y, _ = jax.lax.scan(heun, y, pairs)
            return y
        first = jnp.arange(len(grid) - 1) == 0  # the multistep history starts afresh in each stage's coordinates
        (y, _, _), _ = jax.lax.scan(dpm, (y, jnp.zeros_like(y), jnp.ones((), dtype)), pairs + (first,))
        return y

    key, k0 = jax.random.split(key)
    y = constrain(sde.prior_sample(k0, (batch_size,) + tuple(shapes[K]), dtype) / sde.alpha(sde.T))
    for stage, k in enumerate(range(K, -1, -1)):
        y = run_stage(k, y, grids[stage])
        if k == 0:
            break
        t = subspace.cutoffs[k - 1]
        key, kl = jax.random.split(key)
        noise = jax.random.normal(kl, (batch_size,) + tuple(shapes[k - 1]), dtype)
        alpha = sde.alpha(t)
        y = constrain(subspace.lift(sde, alpha * y, k, t, noise) / alpha)
    r_end = grids[-1][-1]
    x = denoiser(0)(y, jnp.asarray(r_end, dtype)) if cfg.denoise else y * sde.alpha(sde.t_of_noise_ratio(r_end))
    return constrain(x), nfe


def make_ode_sampler(sde: SDE, cfg: ODESamplerConfig, build_scores: Callable, subspace: Optional[Subspace] = None,
                     shape=None, sharding=None):
    """(jitted `sample(params, key, batch_size) -> x`, effective NFE), as `sampling.make_sampler`."""

    def sample(params, key, batch_size):
        return ode_solve(key, batch_size, sde, build_scores(params), cfg, subspace, shape, sharding)[0]

    return jax.jit(sample, static_argnums=2), plan(sde, cfg, subspace)[2]
