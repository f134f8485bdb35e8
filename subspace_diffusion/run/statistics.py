"""The chain's piece statistics as files: measured on the training set, kept per chain in the workdir, read back checked.

`<workdir>/subspace_stats_<chain id>.npz` holds mu_j, sigma_perp_j and the RMS distances with the chain's
signature (its kind, shapes and, for fitted chains, a hash of the bases), `.json` beside it the table for
people. A damaged file in the workdir is a cache: it is measured again, and the log says so. An explicit
`subspace.stats_path` is the user's file: a damaged one is an error, never overwritten.
"""
import json
import os

import numpy as np
from absl import logging

from subspace_diffusion.core.subspaces import (
    Chain,
    PieceStats,
    compute_stats,
    describe_chain,
    signature_id,
)
from subspace_diffusion.formats.files import (
    FileProblem,
    atomic_json,
    atomic_npz,
    read_npz,
)
from subspace_diffusion.run.data import training_images


def stats_path(settings, chain: Chain, workdir) -> str:
    """subspace.stats_path, or <workdir>/subspace_stats_<chain id>.npz: one file per chain, never shared."""
    return settings.subspace.stats_path or os.path.join(workdir, f'subspace_stats_{signature_id(chain.signature())}.npz')


def save(stats: PieceStats, path):
    """Write to .npz (plain arrays plus a JSON signature), whole or not at all."""
    arrays = {f'mu_{j + 1}': np.asarray(m) for j, m in enumerate(stats.mu)}
    atomic_npz(path, sigma_perp=stats.sigma_perp, rms_distance=stats.rms_distance,
               signature=np.array(json.dumps(stats.signature)), **arrays)


def read(path, fix: str) -> PieceStats:
    """The statistics in a file written by `save` (FileProblem naming `fix` when it cannot be)."""
    f = read_npz(path, 'subspace statistics file', fix, required=('sigma_perp', 'rms_distance', 'signature'))
    k = len(f['sigma_perp'])
    missing = [f'mu_{j}' for j in range(1, k + 1) if f'mu_{j}' not in f]
    if missing:
        raise FileProblem(f'subspace statistics file {path} lacks {", ".join(missing)}: {fix}')
    try:
        signature = json.loads(str(f['signature']))
    except json.JSONDecodeError:
        raise FileProblem(f'subspace statistics file {path} has a damaged chain signature: {fix}') from None
    return PieceStats(mu=[f[f'mu_{j}'] for j in range(1, k + 1)], sigma_perp=f['sigma_perp'],
                      rms_distance=f['rms_distance'], signature=signature)


def measure(settings, chain: Chain, workdir=None) -> PieceStats:
    """mu_j, sigma_perp_j and RMS distances of the chain on the training set; written as .npz and .json to workdir."""
    logging.info('measuring the statistics of the %s on the training set', describe_chain(chain))
    stats = compute_stats(chain, training_images(settings.data))
    for k in range(1, chain.num_levels + 1):
        logging.info('level %d %s: RMS distance per orthogonal dim %.4f, piece sigma_perp %.4f', k,
                     'x'.join(map(str, chain.shapes[k])), stats.rms_distance[k - 1], stats.sigma_perp[k - 1])
    if workdir is not None:
        path = stats_path(settings, chain, workdir)
        save(stats, path)
        atomic_json(os.path.splitext(path)[0] + '.json', _table(settings, chain, stats))
        logging.info('wrote %s', path)
    return stats


def _table(settings, chain: Chain, stats: PieceStats) -> dict:
    return {
        'chain': chain.signature(),
        'data_space': 'centered [-1,1]' if settings.data.centered else '[0,1]',
        'levels': [{'level': k, 'shape': list(chain.shapes[k]),
                    'rms_distance_per_orthogonal_dim': float(stats.rms_distance[k - 1]),
                    'piece_sigma_perp': float(stats.sigma_perp[k - 1]),
                    'piece_mean_norm': float(np.linalg.norm(stats.mu[k - 1]))}
                   for k in range(1, chain.num_levels + 1)]}


def load(settings, chain: Chain, workdir, write: bool = True) -> PieceStats:
    """The chain's statistics from subspace.stats_path or the workdir; measured (written when `write`) when absent."""
    path = stats_path(settings, chain, workdir)
    explicit = bool(settings.subspace.stats_path)
    if explicit:
        fix = ('point config.subspace.stats_path at a statistics file of this chain (main.py --mode=subspace_stats '
               'writes one), or leave it empty to measure them into the workdir')
        stats = read(path, fix)
    elif not os.path.exists(path):
        return measure(settings, chain, workdir if write else None)
    else:
        try:
            stats = read(path, 'delete it to measure the statistics again')
        except FileProblem as e:
            logging.warning('%s; measuring them again', e)
            return measure(settings, chain, workdir if write else None)
    if stats.signature != chain.signature():
        raise ValueError(f'the statistics in {path} are of the chain {stats.signature}, this run uses '
                         f'{chain.signature()}: point config.subspace.stats_path at statistics of this '
                         f'chain, or leave it empty to keep one file per chain in the workdir')
    return stats
