"""The one sampler factory: every method (PC, Heun, DPM-Solver++, adaptive ODE) in full space, across a chain, or on one level.

`sample` is the pure dispatch: it runs the chosen method from T to the end time and applies the one
final Tweedie step (with the full-space score) that every method shares. `make_sampler` compiles it
once for a `Diffusion` and a `SamplerConfig`, with the score functions built from parameters that
enter as arguments, and reports what a sample costs. With a measurement (`conditional.py`) the same
samplers fill in what a projector leaves unknown.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from subspace_diffusion.core import conditional
from subspace_diffusion.core.diffusion import Diffusion
from subspace_diffusion.core.likelihood import Tolerance, ode_sample
from subspace_diffusion.core.ode import SOLVERS, ODEConfig, ode_solve, plan
from subspace_diffusion.core.pc import PCConfig, calls_per_level, pc_sample

METHODS = ('pc', 'ode', *SOLVERS)  # 'ode': the adaptive Dormand-Prince solve of likelihood.py


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """A sampler: the method, where its grid ends (eps), the final denoising, and each method's own settings."""

    method: str = 'pc'
    eps: float = 1e-5
    denoise: bool = True  # end with one Tweedie step E[x0 | x_eps] of the full-space model
    pc: PCConfig = PCConfig()
    ode: ODEConfig = ODEConfig()  # ode_heun, dpm_solver++: the effective-NFE budget and its split
    tolerance: Tolerance = Tolerance()  # ode: the adaptive solver's error control

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f'config.sampling.method: must be one of {METHODS}, got {self.method!r}')


@dataclasses.dataclass(frozen=True)
class Cost:
    """What a sample costs: network calls per level and their effective NFE (sum of n_level / d per call).

    The adaptive solver's calls are known only after it ran: `effective_nfe` is None and the sampler returns
    its count of drift evaluations (unweighted by level, +1 for the denoising step) instead.
    """

    calls_per_level: Optional[dict]
    effective_nfe: Optional[float]
    counts: str


class Sampler(NamedTuple):
    """A compiled sampler and its cost; `sample(params, key, batch_size)` -> (x (B, *shape) model space, NFE),
    or with a measurement `sample(params, key, data, aux)`, aux the projector's argument (e.g. the mask)."""

    sample: Callable
    cost: Cost


def _run(key, batch_size: int, diffusion: Diffusion, score_fns: Sequence[Callable], cfg: SamplerConfig, impose):
    """(x at the method's end time, that time, its NFE without the final step): the method alone."""
    if cfg.method == 'pc':
        x, t = pc_sample(key, batch_size, diffusion, score_fns, cfg.pc, cfg.eps, impose)
        return x, t, None
    if cfg.method in SOLVERS:
        x, t = ode_solve(key, batch_size, diffusion, score_fns, plan(diffusion, cfg.method, cfg.ode, cfg.eps), impose)
        return x, t, None
    if impose is not None:
        raise ValueError("config.sampling.method: the adaptive 'ode' solver has no fixed grid to impose a measurement "
                         "on; use 'pc', 'ode_heun' or 'dpm_solver++'")
    return ode_sample(key, batch_size, diffusion, score_fns, cfg.tolerance, cfg.eps)


def sample(key, batch_size: int, diffusion: Diffusion, score_fns: Sequence[Callable], cfg: SamplerConfig,
           impose: Optional[Callable] = None):
    """(samples (B, *shape) in model space, adaptive solver's NFE or None): the method, then Tweedie at its end.

    The final denoising step uses the full-space score; a fixed-grid method's NFE is `cost(...)`, known in advance.
    """
    x, t, evals = _run(key, batch_size, diffusion, score_fns, cfg, impose)
    if cfg.denoise:
        x = diffusion.constrain(diffusion.sde.tweedie(x, t, score_fns[0](x, jnp.full((batch_size,), t))))
    return x, None if evals is None else evals + cfg.denoise


def cost(diffusion: Diffusion, cfg: SamplerConfig) -> Cost:
    """Network calls per level and effective NFE of one sample of `cfg` on `diffusion` (SPEC section 3)."""
    if cfg.method == 'ode':
        return Cost(None, None, 'ODE solver evaluations of the drift (+1 for denoising), not weighted by level')
    if cfg.method == 'pc':
        calls = calls_per_level(cfg.pc, diffusion, cfg.eps)
    else:
        calls = dict(plan(diffusion, cfg.method, cfg.ode, cfg.eps).calls_per_level)
    calls[0] += cfg.denoise
    return Cost(calls, diffusion.effective_nfe(calls), 'effective (sum of n_level / d per call)')


def make_sampler(diffusion: Diffusion, cfg: SamplerConfig, build_scores: Callable, level: int = 0,
                 measurement: Optional[Callable] = None) -> Sampler:
    """The jitted sampler of `cfg` on `diffusion` and its cost; `build_scores(params)` -> one score per sampled level.

    level k > 0: only the level-k network of a chain (a training run of one subspace level), sampled in
    V_k from T down to its cutoff t_k, denoised there and shown up-projected. `measurement(aux)` -> a
    projector Pi (conditional.py): then the sampler keeps Pi data and fills in the rest.
    """
    run_on = diffusion.level(level)
    if level:
        cfg = dataclasses.replace(cfg, eps=diffusion.cutoffs[level - 1])
    report = cost(run_on, cfg)
    if level and report.calls_per_level is not None:
        report = Cost({level: report.calls_per_level[0]}, report.effective_nfe * diffusion.cost(level), report.counts)

    def show(x):
        return diffusion.subspace.chain.up(x, level) if level else x

    def reported(out):
        x, evals = out
        return x, report.effective_nfe if evals is None else evals

    if measurement is None:
        def draw(params, key, batch_size):
            x, evals = sample(key, batch_size, run_on, build_scores(params), cfg)
            return show(x), evals

        compiled = jax.jit(draw, static_argnums=2)
        return Sampler(lambda params, key, batch_size: reported(compiled(params, key, batch_size)), report)

    if level:
        raise ValueError('a measurement is imposed in full space: sample the whole chain (levels 0..K), not one level')

    def fill_in(params, key, data, aux):
        project = measurement(aux)
        x, evals = sample(key, data.shape[0], diffusion, build_scores(params), cfg,
                          conditional.replacement(data, project, diffusion))
        return conditional.keep_known(x, data, project), evals

    compiled = jax.jit(fill_in)
    return Sampler(lambda params, key, data, aux: reported(compiled(params, key, data, aux)), report)
