"""Resumable, sharded sampling for evaluation: one .npz per batch, a function of the batch index alone.

Batch i of an eval folder uses the key fold_in(key, i) and is written atomically as samples_<i>.npz,
so a killed evaluation, rerun with the same command, keeps its batches and produces the same samples.
A folder records what determined its samples (samples_settings.json); other settings are refused.
"""
import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from subspace_diffusion import data, likelihood, parallel
from subspace_diffusion.experiment import Experiment
from subspace_diffusion.files import atomic_json, atomic_npz
from subspace_diffusion.progress import fmt_duration
from subspace_diffusion.quality import to_uint8
from subspace_diffusion.sampling import sampling_eps

SAMPLE_STREAM = 3  # fold_in index of eval sampling randomness (training uses 0..2)


def make_sample_fn(exp: Experiment, stats, mesh, batch_size):
    """(fn(params, key) -> (images (batch_size, H, W, C) model space, NFE), what the NFE counts)."""
    settings = exp.settings
    sharding = parallel.batch_sharding(mesh)
    if settings.sampling.method != 'ode':
        sample, nfe = exp.sampler(stats, sharding=sharding)
        return (lambda params, key: (sample(params, key, batch_size), nfe)), 'effective (sum of n_level / d per call)'
    ev, cfg = settings.eval, settings.sampling.pc
    eps = sampling_eps(exp.sde, cfg)
    subspace = exp.sampling_subspace(stats)

    def ode(params, key):
        scores = [exp.score_fn(params, k) for k in exp.levels]
        x, n_evals = likelihood.ode_sample(key, batch_size, exp.sde, scores, exp.level_shape(0), subspace, eps=eps,
                                           rtol=ev.ode_rtol, atol=ev.ode_atol)
        if cfg.denoise:  # Tweedie at eps with the full-space model, as the PC sampler does
            t = jnp.full((batch_size,), eps)
            x = (x + exp.sde.sigma(eps) ** 2 * scores[0](x, t)) / exp.sde.alpha(eps)
            n_evals = n_evals + 1
        return jax.lax.with_sharding_constraint(x, sharding), n_evals

    return jax.jit(ode), 'ODE solver evaluations of the drift (+1 for denoising), not weighted by level'


def record(exp: Experiment, sources: dict) -> dict:
    """What determines the samples of an eval folder; a rerun must match it to reuse the shards."""
    s = exp.settings
    return {'num_samples': s.eval.num_samples, 'batch_size': s.eval.batch_size, 'seed': s.seed,
            'sampling': dataclasses.asdict(s.sampling), 'space': exp.describe(),
            'checkpoint_steps': {str(k): src['step'] for k, src in sources.items()}}


def draw(exp: Experiment, sample_fn, params, folder, settings_record: dict) -> dict:
    """Write every missing samples_<i>.npz of `folder` -> {batch counts, wall time, samples/s} of this run."""
    s = exp.settings
    ev = s.eval
    n_batches = math.ceil(ev.num_samples / ev.batch_size)
    meta_path = os.path.join(folder, 'samples_settings.json')
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        new = json.loads(json.dumps(settings_record))
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(f'{folder} holds samples made with other settings ({", ".join(changed)} differ; see '
                             f'{meta_path}): set eval.folder to evaluate these settings elsewhere, delete the '
                             f'folder to resample, or rerun with the recorded settings')
    elif parallel.is_main_process():
        atomic_json(meta_path, settings_record)
    key = jax.random.fold_in(jax.random.PRNGKey(s.seed), SAMPLE_STREAM)
    shard = lambda i: os.path.join(folder, f'samples_{i}.npz')
    present = np.array([os.path.exists(shard(i)) for i in range(n_batches)])
    if jax.process_count() > 1:  # every process must run the same sampling calls: process 0's view decides
        present = np.asarray(multihost_utils.broadcast_one_to_all(present))
    todo = [i for i in range(n_batches) if not present[i]]
    if len(todo) < n_batches:
        logging.info('resuming: %d of %d sample batches already in %s', n_batches - len(todo), n_batches, folder)
    if todo:
        logging.info('sampling %d batch(es) of %d (%s; the first batch compiles the sampler) ...', len(todo),
                     ev.batch_size, exp.describe())
    inverse = data.get_inverse_scaler(s.data.centered)
    times = []
    for j, i in enumerate(todo):
        t0 = time.perf_counter()
        x, nfe = sample_fn(params, jax.random.fold_in(key, i))  # batch i's key alone decides its samples
        images = to_uint8(inverse(parallel.gather(x)))[:ev.num_samples - i * ev.batch_size]
        if parallel.is_main_process():
            atomic_npz(shard(i), samples=images, nfe=np.asarray(nfe, np.float64))
        times.append(time.perf_counter() - t0)
        # The first batch of a run includes compilation: the rate is measured on the later ones when there are any.
        per_batch = float(np.mean(times[1:] or times))
        logging.info('sample batch %d/%d (%d to go)  %.1f samples/s  ETA %s', i + 1, n_batches, len(todo) - j - 1,
                     ev.batch_size / per_batch, fmt_duration(per_batch * (len(todo) - j - 1)))
    return {'batches': n_batches, 'batches_sampled_this_run': len(todo), 'sampling_wall_s': float(sum(times)),
            'samples_per_s': ev.batch_size / float(np.mean(times[1:] or times)) if times else None}


def load(folder, n_batches):
    """(uint8 samples (N, H, W, C), NFE per sample averaged over batches) from the shards of `folder`."""
    images, nfes = [], []
    for i in range(n_batches):
        with np.load(os.path.join(folder, f'samples_{i}.npz')) as f:
            images.append(f['samples'])
            nfes.append(float(f['nfe']))
    return np.concatenate(images), float(np.mean(nfes))
