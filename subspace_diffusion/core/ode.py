"""Deterministic probability-flow ODE samplers across a subspace chain: Heun (EDM) and DPM-Solver++(2M).

With y = x / alpha(t) and the noise level r = sigma(t) / alpha(t) as time, the probability-flow ODE of
VE, VP and sub-VP alike is dy/dr = (y - D(y, r)) / r, where D = (x + sigma^2 s(x, t)) / alpha is the
denoised (Tweedie) estimate. Stage k integrates it in level-k coordinates from r(t_{k+1}) down to r(t_k)
with the level-k score: the full ODE restricted to V_k (SPEC section 3). At t_k the state is lifted as
the PC sampler lifts it, `Subspace.lift` (the only randomness after the prior draw); the last stage ends at
eps, where the common final step of `sampling.py` applies D (Tweedie). One `lax.scan` per stage, stages chained while tracing: one program.

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

from subspace_diffusion.core.diffusion import Diffusion

SOLVERS = {'ode_heun': 2, 'dpm_solver++': 1}  # method -> network calls per step
RULES = ('log_sigma', 'cost')


@dataclasses.dataclass(frozen=True)
class ODEConfig:
    """The fixed-step solvers' settings: effective-NFE budget, how it is split over the stages, Heun's grid."""

    nfe_budget: float = 35.0
    budget_rule: str = 'log_sigma'
    rho: float = 7.0  # EDM's time discretisation of r for Heun

    def __post_init__(self):
        if self.budget_rule not in RULES:
            raise ValueError(f'config.sampling.budget_rule: must be one of {RULES}, got {self.budget_rule!r}')


@dataclasses.dataclass(frozen=True)
class ODEPlan:
    """A solve laid out before tracing: the solver, one noise-level grid per stage (K..0), network calls per level."""

    solver: str
    grids: tuple
    calls_per_level: dict


def stage_bounds(diffusion: Diffusion, eps: float) -> list:
    """[(r_start, r_end)] of stages K..0: noise levels at T, t_K, ..., t_1, eps (r falls along the way)."""
    sde = diffusion.sde
    times = [sde.T] + list(reversed(diffusion.cutoffs)) + [eps]
    with jax.ensure_compile_time_eval():  # a plan made while a sampler is traced
        r = [float(sde.noise_ratio(t)) for t in times]
    return list(zip(r[:-1], r[1:]))


def stage_steps(solver: str, cfg: ODEConfig, bounds, costs, denoise: bool = True) -> list:
    """Steps of each stage (K..0), at least one, spending about cfg.nfe_budget effective NFE (the final denoising
    call at level 0 included when `denoise`); costs = n_k / d."""
    calls = SOLVERS[solver]
    shares = np.array([math.log(hi / lo) for hi, lo in bounds])
    shares /= shares.sum()
    costs = np.asarray(costs, np.float64)
    spend = cfg.nfe_budget - float(denoise)
    if cfg.budget_rule == 'log_sigma':
        steps = shares * spend / (calls * np.sum(shares * costs))
    else:
        steps = shares * spend / (calls * costs)
    return [max(1, int(round(s))) for s in steps]


def stage_grid(solver: str, r_start: float, r_end: float, n: int, rho: float) -> np.ndarray:
    """n + 1 noise levels from r_start down to r_end: EDM's rho schedule for Heun, uniform in log r for DPM."""
    u = np.linspace(0.0, 1.0, n + 1)
    if solver == 'ode_heun':
        return (r_start ** (1 / rho) + u * (r_end ** (1 / rho) - r_start ** (1 / rho))) ** rho
    return np.exp(np.log(r_start) + u * (np.log(r_end) - np.log(r_start)))


def plan(diffusion: Diffusion, solver: str, cfg: ODEConfig, eps: float, denoise: bool = True) -> ODEPlan:
    """The grids of `solver` (a key of SOLVERS) for the budget, from T to eps, and its network calls per level
    (the budget keeps one level-0 call for the final denoising step when `denoise`)."""
    bounds = stage_bounds(diffusion, eps)
    levels = range(diffusion.num_levels, -1, -1)
    steps = stage_steps(solver, cfg, bounds, [diffusion.cost(k) for k in levels], denoise)
    grids = tuple(stage_grid(solver, hi, lo, n, cfg.rho) for (hi, lo), n in zip(bounds, steps))
    return ODEPlan(solver, grids, {k: SOLVERS[solver] * n for k, n in zip(levels, steps)})


def ode_solve(key, x_top, diffusion: Diffusion, score_fns: Sequence[Callable], plan: ODEPlan,
              impose: Optional[Callable] = None):
    """Fixed-step probability-flow ODE solve across the chain from x_top (B, *level-K shape) at the first grid
    point -> (x (B, *shape) at the grid's end, its time); `key` drives the lifts and the hook.

    `impose(key, x, k, t)`, if given, maps the level-k state (in x, not y) after the prior draw, every
    step and every lift, as in the PC sampler (conditional.py).
    """
    sde, dtype, K = diffusion.sde, diffusion.dtype, diffusion.num_levels
    if len(score_fns) != K + 1:
        raise ValueError(f'need one score function per level (K + 1 = {K + 1}), got {len(score_fns)}')

    def denoiser(k):
        def d(y, r):
            t = sde.t_of_noise_ratio(r)
            x = sde.alpha(t) * y
            return sde.tweedie(x, t, score_fns[k](x, jnp.full((x.shape[0],), t)))
        return d

    def imposed(key, y, k, r):
        # The hook acts on x = alpha y at the time of noise level r.
        if impose is None:
            return y
        alpha = sde.alpha(sde.t_of_noise_ratio(r))
        return impose(key, alpha * y, k, sde.t_of_noise_ratio(r)) / alpha

    def run_stage(k, y, key, grid):
        d = denoiser(k)

        def heun(y, step):
            r, r_next, ki = step
            slope = (y - d(y, r)) / r
            y_euler = y + (r_next - r) * slope
            slope_next = (y_euler - d(y_euler, r_next)) / r_next
            return diffusion.constrain(imposed(ki, y + (r_next - r) * (slope + slope_next) / 2, k, r_next)), None

        def dpm(carry, step):
            y, d_prev, h_prev = carry
            r, r_next, ki, first = step
            d_now = d(y, r)
            h = jnp.log(r / r_next)
            q = h_prev / h  # the previous step's length in units of this one
            d_mix = jnp.where(first, d_now, (1 + 1 / (2 * q)) * d_now - d_prev / (2 * q))
            y = imposed(ki, (r_next / r) * y + (1 - r_next / r) * d_mix, k, r_next)
            return (diffusion.constrain(y), d_now, h), None

        n = len(grid) - 1
        # Keys only for the measurement hook: without one the scan carries the state alone.
        steps = (jnp.asarray(grid[:-1], dtype), jnp.asarray(grid[1:], dtype),
                 jax.random.split(key, n) if impose is not None else None)
        if plan.solver == 'ode_heun':
            y, _ = jax.lax.scan(heun, y, steps)
            return y
        first = jnp.arange(n) == 0  # the multistep history starts afresh in each stage's coordinates
        (y, _, _), _ = jax.lax.scan(dpm, (y, jnp.zeros_like(y), jnp.ones((), dtype)), steps + (first,))
        return y

    key, k0 = jax.random.split(key)
    r_top = jnp.asarray(plan.grids[0][0], dtype)
    y = diffusion.constrain(imposed(k0, x_top / sde.alpha(sde.t_of_noise_ratio(r_top)), K, r_top))
    for stage, k in enumerate(range(K, -1, -1)):
        y = run_stage(k, y, jax.random.fold_in(key, stage), plan.grids[stage])  # the hook's keys only
        if k == 0:
            break
        t = diffusion.cutoffs[k - 1]
        key, kl = jax.random.split(key)
        alpha = sde.alpha(t)
        y = diffusion.lift(alpha * y, k, t, kl) / alpha
        y = diffusion.constrain(imposed(jax.random.fold_in(kl, 1), y, k - 1, jnp.asarray(sde.noise_ratio(t), dtype)))
    t_end = sde.t_of_noise_ratio(jnp.asarray(plan.grids[-1][-1], dtype))
    return diffusion.constrain(y * sde.alpha(t_end)), t_end
