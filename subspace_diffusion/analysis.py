"""Subspace analysis jobs run from main.py: per-piece statistics of a chain on the training set."""
import json
import os

import numpy as np
from absl import logging

from subspace_diffusion import data
from subspace_diffusion.subspaces import Chain, compute_stats, make_chain


def image_shape(config):
    """Per-example (H, W, C) of the config's data."""
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def build_chain(config) -> Chain:
    """The config's subspace chain; PCA kinds are fitted on `subspace.fit_examples` training images."""
    sub = config.subspace
    fitted = None
    if sub.kind in ('pca', 'patch_pca'):
        batches, fitted, n = training_batches(config), [], 0
        for batch in batches:
            fitted.append(batch)
            n += batch.shape[0]
            if n >= sub.get('fit_examples', 10_000):
                break
        fitted = np.concatenate(fitted)
    return make_chain(sub.kind, image_shape(config), sub.levels, data=fitted, patch=sub.get('factor', 2))


def training_batches(config, batch_size=256):
    """One pass over the training images (B, H, W, C) in model space, without flips or dequantisation."""
    # Statistics describe the data itself: no flips, no dequantisation noise.
    return (b['image'] for b in data.get_dataset(config, 'train', batch_size, augment=False, repeat=False))


def stats_path(config, workdir):
    """Where the statistics live: subspace.stats_path, or <workdir>/subspace_stats.npz."""
    return config.subspace.get('stats_path') or os.path.join(workdir, 'subspace_stats.npz')


def subspace_stats(config, workdir, chain=None, write=True):
    """Measure mu_j, sigma_perp_j and RMS distances of the chain on the training set; write .npz and JSON."""
    chain = chain or build_chain(config)
    stats = compute_stats(chain, training_batches(config))
    if not write:
        return stats
    path = stats_path(config, workdir)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stats.save(path)
    table = {
        'chain': chain.signature(),
        'data_space': 'centered [-1,1]' if config.data.centered else '[0,1]',
        'levels': [{'level': k, 'shape': list(chain.shapes[k]),
                    'rms_distance_per_orthogonal_dim': float(stats.rms_distance[k - 1]),
                    'piece_sigma_perp': float(stats.sigma_perp[k - 1]),
                    'piece_mean_norm': float(np.linalg.norm(stats.mu[k - 1]))}
                   for k in range(1, chain.num_levels + 1)],
    }
    with open(os.path.splitext(path)[0] + '.json', 'w') as f:
        json.dump(table, f, indent=2)
    for row in table['levels']:
        logging.info('level %d %s: RMS distance per orthogonal dim %.4f, piece sigma_perp %.4f', row['level'],
                     'x'.join(map(str, row['shape'])), row['rms_distance_per_orthogonal_dim'],
                     row['piece_sigma_perp'])
    logging.info('wrote %s', path)
    return stats
