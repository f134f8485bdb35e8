"""The one sampler factory: every method (PC, Heun, DPM-Solver++, adaptive ODE) in full space, across a chain, or on one level.

`sample` is the pure dispatch: it runs the chosen method from T to the end time and applies the one
final Tweedie step (with the full-space score) that every method shares. `make_sampler` compiles it
once for a `Diffusion` and a `SamplerConfig`, with the score functions built from parameters that
enter as arguments, and reports what a sample costs. With a measurement (`conditional.py`) the same
samplers fill in what a projector leaves unknown. For a class-conditional model the sampler is also given
class labels, and every score it runs (each level's, full space or chain, and the final denoising one) is
the guided one of `guidance.py`; with per-class piece statistics the lifts draw each sample's dropped
directions from its own class's.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion import compiler
from subspace_diffusion.core import conditional, guidance
from subspace_diffusion.core.diffusion import Diffusion
from subspace_diffusion.core.likelihood import Tolerance, ode_sample, require_finished
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
    guidance: float = 0.0  # classifier-free guidance w of a class-conditional model (guidance.py)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f'config.sampling.method: must be one of {METHODS}, got {self.method!r}')
        if not self.guidance >= 0:  # NaN too
            raise ValueError(f'config.sampling.guidance: must be >= 0 (0: the class-conditional score itself), '
                             f'got {self.guidance}')


@dataclasses.dataclass(frozen=True)
class Cost:
    """What a sample costs: network calls per level and their effective NFE (sum of n_level / d per call).

    The adaptive solver's calls are known only after it ran: `effective_nfe` is None and the sampler returns
    its count of drift evaluations (unweighted by level, +1 for the denoising step) instead. Under classifier-free
    guidance (w != 0) every call evaluates the network twice (conditional and unconditional, one batch of 2B):
    calls and effective NFE count both, and `counts` says so.
    """

    calls_per_level: Optional[dict]
    effective_nfe: Optional[float]
    counts: str


class Sampler(NamedTuple):
    """A compiled sampler and its cost; `sample(params, key, batch_size, labels=None)` -> (x (B, *shape) model space,
    info), or with a measurement `sample(params, key, data, aux, labels=None)`, aux the projector's argument (e.g.
    the mask); labels (B,) int: class labels of a class-conditional model's samples (num_classes = no label).

    info: {'nfe': NFE per sample}, and for the adaptive solver also 'ode_steps' (its steps, accepted and
    rejected) and 'ode_t_end' (where it stopped: eps; a solve stopped by its step limit raises SolverStopped).
    """

    sample: Callable
    cost: Cost


def _run(key, batch_size: int, diffusion: Diffusion, score_fns: Sequence[Callable], cfg: SamplerConfig, impose):
    """(x at the method's end time, that time, the adaptive solver's SolveStats or None): the method alone.

    Every method starts from the same prior draw of the same key (full space; a chain takes its level-K
    coordinates), so methods and spaces compared at one seed start from the same noise.
    """
    k_prior, key = jax.random.split(key)
    x_T = diffusion.prior(k_prior, batch_size)
    if cfg.method == 'pc':
        x, t = pc_sample(key, diffusion.down(x_T, diffusion.num_levels), diffusion, score_fns, cfg.pc, cfg.eps, impose)
        return x, t, None
    if cfg.method in SOLVERS:
        x, t = ode_solve(key, diffusion.down(x_T, diffusion.num_levels), diffusion, score_fns,
                         plan(diffusion, cfg.method, cfg.ode, cfg.eps, cfg.denoise), impose)
        return x, t, None
    if impose is not None:
        raise ValueError("config.sampling.method: the adaptive 'ode' solver has no fixed grid to impose a measurement "
                         "on; use 'pc', 'ode_heun' or 'dpm_solver++'")
    x, stats = ode_sample(x_T, diffusion, score_fns, cfg.tolerance, cfg.eps)
    return x, stats.t, stats


def sample(key, batch_size: int, diffusion: Diffusion, score_fns: Sequence[Callable], cfg: SamplerConfig,
           impose: Optional[Callable] = None):
    """(samples (B, *shape) in model space, the adaptive solver's SolveStats or None): the method, then Tweedie.

    The final denoising step uses the full-space score at the time the method reached; a fixed-grid
    method's NFE is `cost(...)`, known in advance. Guided samplers pass guided scores (`make_sampler`).
    """
    x, t, stats = _run(key, batch_size, diffusion, score_fns, cfg, impose)
    if cfg.denoise:
        x = diffusion.constrain(diffusion.sde.tweedie(x, t, score_fns[0](x, jnp.full((batch_size,), t))))
    return x, stats


def cost(diffusion: Diffusion, cfg: SamplerConfig) -> Cost:
    """Network calls per level and effective NFE of one sample of `cfg` on `diffusion` (SPEC section 3); doubled
    under guidance (cfg.guidance != 0: a conditional and an unconditional evaluation per call)."""
    per_call = guidance.evaluations(cfg.guidance)
    guided = '; x2: classifier-free guidance evaluates the unconditional score too' if per_call > 1 else ''
    if cfg.method == 'ode':
        return Cost(None, None, 'ODE solver evaluations of the drift (+1 for denoising), not weighted by level'
                    + guided)
    if cfg.method == 'pc':
        calls = calls_per_level(cfg.pc, diffusion, cfg.eps)
    else:
        calls = dict(plan(diffusion, cfg.method, cfg.ode, cfg.eps, cfg.denoise).calls_per_level)
    calls[0] += cfg.denoise
    calls = {k: n * per_call for k, n in calls.items()}
    return Cost(calls, diffusion.effective_nfe(calls), 'effective (sum of n_level / d per call)' + guided)


def _on_level(diffusion: Diffusion, cfg: SamplerConfig, level: int = 0) -> tuple:
    """(process, settings, Cost) that `make_sampler` samples at `level`: 0 all of `diffusion`; k > 0 its level k
    alone, in V_k from T down to the cutoff t_k, with the budget and the cost in full-space units."""
    if not level:
        return diffusion, cfg, cost(diffusion, cfg)
    # the budget counts full-space calls, as every effective NFE does: in level-k calls it is 1 / cost(k) more
    cfg = dataclasses.replace(cfg, eps=diffusion.cutoffs[level - 1], ode=dataclasses.replace(
        cfg.ode, nfe_budget=cfg.ode.nfe_budget / diffusion.cost(level)))
    run_on = diffusion.level(level)
    report = cost(run_on, cfg)
    if report.calls_per_level is not None:
        report = Cost({level: report.calls_per_level[0]}, report.effective_nfe * diffusion.cost(level), report.counts)
    return run_on, cfg, report


def least_nfe(diffusion: Diffusion, cfg: SamplerConfig, level: int = 0) -> float:
    """The least effective NFE per sample of fixed-step solver cfg.method on `diffusion` at `level` (`_on_level`),
    unguided as a budget is: one step per stage and the denoising call, what a budget of 0 costs."""
    at_zero = dataclasses.replace(cfg, guidance=0.0, ode=dataclasses.replace(cfg.ode, nfe_budget=0.0))
    return _on_level(diffusion, at_zero, level)[2].effective_nfe


def below_minimum(diffusion: Diffusion, cfg: SamplerConfig) -> Optional[str]:
    """Why cfg.ode.nfe_budget cannot be kept on `diffusion` (one step per stage already costs more), or None."""
    if cfg.method not in SOLVERS:
        return None
    least = least_nfe(diffusion, cfg)
    if cfg.ode.nfe_budget >= least:
        return None
    return (f'sampling.nfe_budget={cfg.ode.nfe_budget:g} is below the least {cfg.method} spends on this '
            f'{diffusion.num_levels + 1}-stage solve (one step per stage: {least:.3g} effective NFE); a sample costs '
            f'{cost(diffusion, cfg).effective_nfe:.3g}')


def make_sampler(diffusion: Diffusion, cfg: SamplerConfig, build_scores: Callable, level: int = 0,
                 measurement: Optional[Callable] = None, num_classes: int = 0) -> Sampler:
    """The jitted sampler of `cfg` on `diffusion` and its cost; `build_scores(params)` -> one score per sampled level.

    level k > 0: only the level-k network of a chain (a training run of one subspace level), sampled in
    V_k from T down to its cutoff t_k, denoised there and shown up-projected. `measurement(aux)` -> a
    projector Pi (conditional.py): then the sampler keeps Pi data and fills in the rest.
    num_classes > 0: the scores are a class-conditional network's, s(x, t, y), and the sampler takes class labels
    (B,) int (`labels=`, num_classes = no label; None: no label for every sample, at guidance 0 only), sampled
    under cfg.guidance.
    """
    if cfg.guidance and not num_classes:
        raise ValueError(f'config.sampling.guidance={cfg.guidance:g} needs a class-conditional model '
                         f'(model.num_classes > 0); an unconditional one samples with guidance 0')
    run_on, cfg, report = _on_level(diffusion, cfg, level)

    def show(x):
        return diffusion.subspace.chain.up(x, level) if level else x

    def reported(out):
        x, stats = out
        if stats is None:
            return x, {'nfe': report.effective_nfe}
        require_finished(stats, cfg.tolerance, 'sampling ODE', cfg.eps)
        return x, {'nfe': (float(stats.n_evals) + cfg.denoise) * guidance.evaluations(cfg.guidance),
                   'ode_steps': int(stats.n_steps), 'ode_t_end': float(stats.t)}

    def labelled(batch_size, labels):
        """The batch's class labels for the compiled sampler: None for an unconditional model."""
        if not num_classes:
            if labels is not None:
                guidance.check_labels(labels, batch_size, num_classes)  # refuses them
            return None
        if labels is None and cfg.guidance:  # guided towards no label is the unlabelled score at twice the cost
            raise ValueError(f'config.sampling.guidance={cfg.guidance:g} steers samples towards their class labels: '
                             f'pass labels, or sample unlabelled at guidance 0')
        return guidance.check_labels(np.full(batch_size, num_classes) if labels is None else labels, batch_size,
                                     num_classes)

    def setup(process, params, labels):
        """The process and the scores of one draw: guided and, with per-class statistics, lifted per class."""
        if labels is None:
            return process, build_scores(params)
        return (process.labelled(labels),
                [guidance.guided(s, labels, cfg.guidance, num_classes) for s in build_scores(params)])

    if measurement is None:
        def draw(params, key, batch_size, labels):
            process, scores = setup(run_on, params, labels)
            x, stats = sample(key, batch_size, process, scores, cfg)
            return show(x), stats

        compiled = compiler.jit(draw, static_argnums=2)
        return Sampler(lambda params, key, batch_size, labels=None: reported(
            compiled(params, key, batch_size, labelled(batch_size, labels))), report)

    if level:
        raise ValueError('a measurement is imposed in full space: sample the whole chain (levels 0..K), not one level')

    def fill_in(params, key, data, aux, labels):
        project = measurement(aux)
        process, scores = setup(diffusion, params, labels)
        x, stats = sample(key, data.shape[0], process, scores, cfg, conditional.replacement(data, project, process))
        return conditional.keep_known(x, data, project), stats

    compiled = compiler.jit(fill_in)
    return Sampler(lambda params, key, data, aux, labels=None: reported(
        compiled(params, key, data, aux, labelled(data.shape[0], labels))), report)
