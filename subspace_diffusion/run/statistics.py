"""The chain's piece statistics as files: measured on the training set, kept per chain in the workdir, read back checked.

`<workdir>/subspace_stats_<chain id>.npz` holds mu_j, sigma_perp_j and the RMS distances with the chain's
signature (its kind, shapes and, for fitted chains, a hash of the bases), `.json` beside it the table for
people. Under subspace.class_stats the file also holds each class's mu_j and sigma_perp_j (measured with the
training labels), which the lifts of labelled samples use; without it they are ignored. A damaged file in the workdir is a cache: it is measured again, and the log says so. An explicit
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
    if stats.num_classes:
        arrays.update({f'class_mu_{j + 1}': np.asarray(m) for j, m in enumerate(stats.class_mu)},
                      class_sigma_perp=np.asarray(stats.class_sigma_perp))
    atomic_npz(path, sigma_perp=stats.sigma_perp, rms_distance=stats.rms_distance,
               signature=np.array(json.dumps(stats.signature)), **arrays)


def read(path, fix: str) -> PieceStats:
    """The statistics in a file written by `save` (FileProblem naming `fix` when it cannot be)."""
    f = read_npz(path, 'subspace statistics file', fix, required=('sigma_perp', 'rms_distance', 'signature'))
    k = len(f['sigma_perp'])
    classes = 'class_sigma_perp' in f
    missing = [f'{kind}mu_{j}' for kind in ('', 'class_')[:1 + classes] for j in range(1, k + 1)
               if f'{kind}mu_{j}' not in f]
    if missing:
        raise FileProblem(f'subspace statistics file {path} lacks {", ".join(missing)}: {fix}')
    try:
        signature = json.loads(str(f['signature']))
    except json.JSONDecodeError:
        raise FileProblem(f'subspace statistics file {path} has a damaged chain signature: {fix}') from None
    return PieceStats(mu=[f[f'mu_{j}'] for j in range(1, k + 1)], sigma_perp=f['sigma_perp'],
                      rms_distance=f['rms_distance'], signature=signature,
                      class_mu=[f[f'class_mu_{j}'] for j in range(1, k + 1)] if classes else None,
                      class_sigma_perp=f['class_sigma_perp'] if classes else None)


def _classes(settings) -> int:
    """Classes whose statistics are measured and used: model.num_classes under subspace.class_stats, else 0."""
    return settings.network.num_classes if settings.subspace.class_stats else 0


def measure(settings, chain: Chain, workdir=None) -> PieceStats:
    """mu_j, sigma_perp_j and RMS distances of the chain on the training set (and each class's under
    subspace.class_stats); written as .npz and .json to workdir."""
    classes = _classes(settings)
    logging.info('measuring the statistics of the %s on the training set%s', describe_chain(chain),
                 f', per class of {classes}' if classes else '')
    stats = compute_stats(chain, training_images(settings.data, labels=bool(classes)), classes)
    for k in range(1, chain.num_levels + 1):
        logging.info('level %d %s: RMS distance per orthogonal dim %.4f, piece sigma_perp %.4f%s', k,
                     'x'.join(map(str, chain.shapes[k])), stats.rms_distance[k - 1], stats.sigma_perp[k - 1],
                     f' (per class {np.array2string(stats.class_sigma_perp[:, k - 1], precision=4)})'
                     if classes else '')
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
                    'piece_mean_norm': float(np.linalg.norm(stats.mu[k - 1])),
                    **({'class_piece_sigma_perp': stats.class_sigma_perp[:, k - 1].tolist()} if stats.num_classes
                       else {})}
                   for k in range(1, chain.num_levels + 1)]}


def load(settings, chain: Chain, workdir, write: bool = True) -> PieceStats:
    """The chain's statistics from subspace.stats_path or the workdir; measured (written when `write`) when absent,
    or when subspace.class_stats asks for per-class ones the workdir's file lacks. Per-class statistics only
    under subspace.class_stats."""
    path = stats_path(settings, chain, workdir)
    explicit = bool(settings.subspace.stats_path)
    classes = _classes(settings)
    if explicit:
        fix = ('point config.subspace.stats_path at a statistics file of this chain (main.py --mode=subspace_stats '
               'writes one), or leave it empty to measure them into the workdir')
        stats = read(path, fix)
        if classes and stats.num_classes != classes:
            raise FileProblem(f'subspace statistics file {path} holds per-class statistics of {stats.num_classes} '
                              f'class(es), and subspace.class_stats needs them of {classes}: measure them with '
                              f'main.py --mode=subspace_stats --config.subspace.class_stats=True and point '
                              f'config.subspace.stats_path at that file')
    elif not os.path.exists(path):
        return measure(settings, chain, workdir if write else None)
    else:
        try:
            stats = read(path, 'delete it to measure the statistics again')
        except FileProblem as e:
            logging.warning('%s; measuring them again', e)
            return measure(settings, chain, workdir if write else None)
        if classes and stats.num_classes != classes and stats.signature == chain.signature():
            logging.info('%s holds no per-class statistics of %d classes: measuring them', path, classes)
            return measure(settings, chain, workdir if write else None)
    if stats.signature != chain.signature():
        raise ValueError(f'the statistics in {path} are of the chain {stats.signature}, this run uses '
                         f'{chain.signature()}: point config.subspace.stats_path at statistics of this '
                         f'chain, or leave it empty to keep one file per chain in the workdir')
    return stats if classes else stats.dataset_wide()
