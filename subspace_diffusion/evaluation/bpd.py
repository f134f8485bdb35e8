"""Bits/dim of a dataset split by the implicit-score probability-flow ODE (eval.enable_bpd; SPEC section 3).

Every example is dequantised `eval.bpd_num_repeats` times (uniform, 256 levels) and integrated from
eval.likelihood_eps (1e-5, as score-SDE) to T; batch (r, i) has its own key, so results are reproducible.
"""
import math
import time

import jax
import numpy as np
from absl import logging

from subspace_diffusion import compiler
from subspace_diffusion.core import likelihood
from subspace_diffusion.core.diffusion import Diffusion
from subspace_diffusion.run import data, parallel
from subspace_diffusion.run.progress import fmt_duration
from subspace_diffusion.run.settings import Settings

BPD_STREAM = 4  # fold_in index of bits/dim randomness (training uses 0..2, sampling 3)


def bpd_function(settings: Settings, diffusion: Diffusion, build_scores):
    """Jitted (params, key, x01 (B, H, W, C) in [0,1]) -> (bits/dim (B,), SolveStats): dequantise, scale, integrate.

    A solve stopped by its step limit must be refused by the caller (`likelihood.require_finished`)."""
    ev = settings.eval
    scaler = data.get_scaler(settings.data.centered)

    @compiler.jit
    def batch_bpd(params, key, x01):
        kd, kl = jax.random.split(key)
        x = scaler(likelihood.dequantize(x01, jax.random.uniform(kd, x01.shape, x01.dtype)))
        logp, _, stats = likelihood.log_likelihood(kl, x, diffusion, build_scores(params), eps=ev.likelihood_eps,
                                                   tolerance=ev.tolerance)
        return likelihood.bits_per_dim(logp, math.prod(x.shape[1:]), settings.data.centered), stats

    return batch_bpd


def split_bpd(settings: Settings, diffusion: Diffusion, build_scores, params, mesh) -> dict:
    """Mean bits/dim (8-bit scale) of eval.bpd_dataset, its standard error, and the solver's cost."""
    ev = settings.eval
    x01 = data.split_images(settings.data, ev.bpd_dataset, max_examples=ev.bpd_num_examples)
    n_dev = mesh.devices.size
    bs = min(ev.batch_size, -(-len(x01) // n_dev) * n_dev)  # no padding beyond what the examples need
    sharding = parallel.batch_sharding(mesh)
    batch_bpd = bpd_function(settings, diffusion, build_scores)
    key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), BPD_STREAM)
    n_batches = math.ceil(len(x01) / bs)
    total = ev.bpd_num_repeats * n_batches
    logging.info('bits/dim of %d %s examples x %d dequantisation draw(s) (the first batch compiles the ODE) ...',
                 len(x01), ev.bpd_dataset, ev.bpd_num_repeats)
    values, n_evals, t_start = [], [], time.perf_counter()
    for r in range(ev.bpd_num_repeats):
        for i in range(n_batches):
            chunk = x01[i * bs:(i + 1) * bs]
            # Padded to the compiled batch size (and a multiple of the devices); padded rows are dropped.
            padded = parallel.pad_rows(chunk, bs)
            x = jax.make_array_from_callback(padded.shape, sharding, lambda idx: padded[idx])
            bpd, stats = batch_bpd(params, jax.random.fold_in(jax.random.fold_in(key, r), i), x)
            likelihood.require_finished(stats, ev.tolerance, 'likelihood ODE', settings.sde.T)
            values.append(parallel.gather(bpd)[:len(chunk)])
            n_evals.append(int(stats.n_evals))
            done = r * n_batches + i + 1
            per_batch = (time.perf_counter() - t_start) / done
            logging.info('bits/dim batch %d/%d  %.1f examples/s  ETA %s  running mean %.4f', done, total,
                         len(chunk) / per_batch, fmt_duration(per_batch * (total - done)),
                         float(np.mean(np.concatenate(values))))
    values = np.concatenate(values)
    return {'bpd': float(values.mean()), 'bpd_stderr': float(values.std() / math.sqrt(len(values))),
            'bpd_dataset': ev.bpd_dataset, 'bpd_num_examples': len(x01), 'bpd_num_repeats': ev.bpd_num_repeats,
            'bpd_ode_nfe_per_batch': float(np.mean(n_evals)), 'bpd_wall_s': time.perf_counter() - t_start}
