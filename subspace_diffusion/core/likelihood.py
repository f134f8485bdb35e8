"""Probability-flow ODE with the implicit subspace score: exact log-likelihood and bits/dim (SPEC section 3).

The ODE lives in R^d; on (t_k, t_{k+1}] only the level-k network runs (`lax.switch` on the level of t).
Its divergence splits into the network part in level-k coordinates (Hutchinson probes of dimension
n_k, or the exact trace for small n_k) and the closed-form Gaussian pieces, which need no probe.
"""
import dataclasses
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from subspace_diffusion.core.diffusion import Diffusion

LIKELIHOOD_EPS = 1e-5  # start of the likelihood ODE for every SDE (score-SDE and the reference)
TRACES = ('rademacher', 'gaussian', 'exact')


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Error control of the adaptive Dormand-Prince solver: relative and absolute tolerance, and its step limit."""

    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 4096


class SolveStats(NamedTuple):
    """What an adaptive solve did: drift evaluations, steps (accepted and rejected), the time it reached, and
    whether that is the end time (False: it stopped at `max_steps`, and its result must not be used)."""

    n_evals: jax.Array
    n_steps: jax.Array
    t: jax.Array
    finished: jax.Array

# Dormand-Prince 5(4) tableau: nodes, stage weights, 5th-order weights, and 5th-minus-4th-order weights.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
      (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_E = (35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
      -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40)


class SolverStopped(ValueError):
    """An adaptive solve hit its step limit before its end time: its result is not used."""


def require_finished(stats: SolveStats, tolerance: Tolerance, what: str, end: float):
    """Raise SolverStopped (one line naming the setting to raise) unless every solve in `stats` reached `end`."""
    if not bool(jnp.all(stats.finished)):
        raise SolverStopped(
            f'the {what} solver stopped at its step limit ({tolerance.max_steps} steps) at t = '
            f'{float(jnp.max(stats.t)):.4g} before reaching t = {end:g}: its result is not used; raise '
            f'config.eval.ode_max_steps, or loosen config.eval.ode_rtol / ode_atol')


def _axpy(y, ks, coeffs, h):
    """y + h sum_i c_i k_i over pytrees."""
    def comb(y, *k):
        return y + h * sum(c * ki for c, ki in zip(coeffs, k) if c != 0.0)
    return jax.tree.map(comb, y, *ks)


def odeint(fn: Callable, y0, t0: float, t1: float, tolerance: Tolerance = Tolerance()):
    """Adaptive Dormand-Prince 5(4) solve of dy/dt = fn(y, t) from t0 to t1 (either direction) -> (y, SolveStats).

    Jittable (`lax.while_loop`); error control by the RMS of err / (atol + rtol max(|y|, |y_new|)). After
    `tolerance.max_steps` steps it stops where it is: `SolveStats.finished` says whether it reached t1.
    """
    rtol, atol, max_steps = tolerance.rtol, tolerance.atol, tolerance.max_steps
    direction = 1.0 if t1 >= t0 else -1.0

    def error_ratio(y, y_new, err):
        ys, news, errs = jax.tree.leaves(y), jax.tree.leaves(y_new), jax.tree.leaves(err)
        total = sum(jnp.sum((e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))) ** 2)
                    for a, b, e in zip(ys, news, errs))
        return jnp.sqrt(total / sum(e.size for e in errs))

    def step(state):
        t, y, h, k1, n_evals, n_steps = state
        h = direction * jnp.minimum(jnp.abs(h), jnp.abs(t1 - t))
        ks = [k1]
        for i in range(1, 7):
            ks.append(fn(_axpy(y, ks, _A[i], h), t + _C[i] * h))
        y_new = _axpy(y, ks, _B, h)
        err = jax.tree.map(lambda *k: h * sum(e * ki for e, ki in zip(_E, k) if e != 0.0), *ks)
        ratio = error_ratio(y, y_new, err)
        accept = ratio <= 1.0
        factor = jnp.clip(0.9 * jnp.maximum(ratio, 1e-10) ** -0.2, 0.2, 10.0)
        pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(accept, u, v), a, b)
        return (jnp.where(accept, t + h, t), pick(y_new, y), h * factor, pick(ks[6], k1),
                n_evals + 6, n_steps + 1)

    def remaining(t):
        return direction * (t1 - t) > 1e-9 * max(abs(t1), abs(t0), 1.0)

    def not_done(state):
        t, _, _, _, _, n_steps = state
        return remaining(t) & (n_steps < max_steps)

    h0 = direction * 1e-2 * abs(t1 - t0)
    dtype = jax.tree.leaves(y0)[0].dtype
    init = (jnp.asarray(t0, dtype), y0, jnp.asarray(h0, dtype), fn(y0, jnp.asarray(t0, dtype)), 1, 0)
    t, y, _, _, n_evals, n_steps = jax.lax.while_loop(not_done, step, init)
    return y, SolveStats(n_evals, n_steps, t, ~remaining(t))


def _divergence(fn, x, probe, trace):
    """(fn(x), div fn(x)) per example for fn: (B, ...) -> (B, ...); Hutchinson with `probe`, exact, or 'none'."""
    axes = tuple(range(1, x.ndim))
    if trace == 'none':
        return fn(x), jnp.zeros(x.shape[0], x.dtype)
    if trace == 'exact':
        n = math.prod(x.shape[1:])
        basis = jnp.eye(n, dtype=x.dtype).reshape((n, 1) + x.shape[1:])
        out = fn(x)
        cols = jax.vmap(lambda e: jax.jvp(fn, (x,), (jnp.broadcast_to(e, x.shape),))[1])(basis)
        diag = jnp.einsum('nb...,n...->nb', cols.reshape((n, x.shape[0], n)), basis.reshape(n, n))
        return out, jnp.sum(diag, axis=0)
    out, jv = jax.jvp(fn, (x,), (probe,))
    return out, jnp.sum(jv * probe, axis=axes)


def ode_drift_and_div(diffusion: Diffusion, level_scores: Sequence[Callable], probes, trace):
    """Returns f(y, t) for y = (x (B, *shape), logp (B,)): probability-flow drift and its divergence (SPEC section 3)."""
    sde, subspace, K = diffusion.sde, diffusion.subspace, diffusion.num_levels

    def branch(k):
        def f(x, t):
            vt = jnp.full((x.shape[0],), t)
            xk = subspace.chain.down(x, k) if k else x
            sk, div_k = _divergence(lambda z: level_scores[k](z, vt), xk, probes[k], trace)
            score, div = sk, div_k
            if k:
                score = subspace.implicit_score(sde, lambda z, tt: sk, k)(x, vt)
                div = div_k - sum(subspace.chain.piece_dim(j) / subspace.lift_variance(sde, j, t)
                                  for j in range(1, k + 1))
            drift = sde.reverse_drift(x, vt, score, prob_flow=True)
            n = math.prod(x.shape[1:])
            return drift, n * sde.f(t) - 0.5 * sde.g2(t) * div
        return f

    branches = [branch(k) for k in range(K + 1)]

    def f(y, t):
        x, _ = y
        if K == 0:
            return branches[0](x, t)
        return jax.lax.switch(subspace.level_of(t), branches, x, t)

    return f


def log_likelihood(key, x, diffusion: Diffusion, level_scores: Sequence[Callable], trace: str = 'rademacher',
                   eps: float = LIKELIHOOD_EPS, tolerance: Tolerance = Tolerance()):
    """(log p(x) in model space (nats, (B,)), x_T (B, ...), SolveStats) by the probability-flow ODE from eps to T.

    eps is 1e-5 for every SDE by default, as score-SDE's likelihood; it is not the sampling eps.
    """
    if trace not in TRACES:
        raise ValueError(f"trace must be one of {TRACES}, got {trace!r}")
    K = diffusion.num_levels
    keys = jax.random.split(key, K + 1)
    draw = {'rademacher': lambda k, s: jax.random.rademacher(k, s, x.dtype),
            'gaussian': lambda k, s: jax.random.normal(k, s, x.dtype),
            'exact': lambda k, s: None}[trace]
    probes = [draw(keys[k], (x.shape[0],) + diffusion.level_shape(k)) for k in range(K + 1)]
    fn = ode_drift_and_div(diffusion, level_scores, probes, trace)
    (z, delta), stats = odeint(fn, (x, jnp.zeros(x.shape[0], x.dtype)), eps, diffusion.sde.T, tolerance)
    return diffusion.sde.prior_logp(z) + delta, z, stats


def ode_sample(x_T, diffusion: Diffusion, level_scores: Sequence[Callable], tolerance: Tolerance, eps: float):
    """Adaptive probability-flow ODE solve from a prior draw x_T (B, *shape) at T down to eps -> (x, SolveStats).

    The state is full-space throughout: the implicit subspace score of the active level drives it.
    """
    fn = ode_drift_and_div(diffusion, level_scores, [None] * (diffusion.num_levels + 1), 'none')
    (x, _), stats = odeint(fn, (x_T, jnp.zeros(x_T.shape[0], x_T.dtype)), diffusion.sde.T, eps, tolerance)
    return diffusion.constrain(x), stats


def bits_per_dim(logp, dim: int, centered: bool):
    """Bits/dim on the 8-bit scale from model-space log p (nats): -logp / (d ln 2) + 8 ([0,1]) or + 7 ([-1,1])."""
    return -logp / (dim * math.log(2)) + (7.0 if centered else 8.0)


def dequantize(x01, u):
    """Uniform dequantisation of [0,1] images with 256 levels: (round(255 x) + u) / 256, u ~ U[0, 1) of x's shape.

    numpy or jax arrays alike (the data pipeline draws u with numpy, the likelihood with jax.random).
    """
    return ((x01 * 255).round() + u) / 256
