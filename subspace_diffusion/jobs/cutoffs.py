"""main.py --mode=cutoffs: the orthogonal Fisher divergence of the full-space model per level, and the cutoffs it implies."""
import json
import os
import time

import jax
import numpy as np
from absl import logging

from subspace_diffusion.core.cutoffs import choose_cutoff, fisher_divergence_curve
from subspace_diffusion.formats.files import atomic_json, read_json
from subspace_diffusion.run import loading, statistics
from subspace_diffusion.run.data import content_id, training_images
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Settings, differences


def _take(batches, n, seen: list):
    """The first n examples of an iterator of (B, ...) batches, as batches; appends each batch's size to `seen`."""
    for x in batches:
        seen.append(len(x[:n]))
        yield x[:n]
        n -= x.shape[0]
        if n <= 0:
            return


def _check_earlier(path, inputs: dict):
    """Refuse to replace a cutoffs.json computed from other inputs (an identical rerun gives the same numbers)."""
    if not os.path.exists(path):
        return
    fix = 'move cutoffs.json and cutoffs.png away (or delete them) to compute these'
    earlier, now = read_json(path, 'cutoffs file', fix).get('inputs'), json.loads(json.dumps(inputs))
    if earlier != now:
        changed = ', '.join(differences(earlier, now)) if isinstance(earlier, dict) else 'not recorded'
        raise ValueError(f'{path} holds cutoffs computed from other inputs ({changed}), which this run would '
                         f'replace: {fix}')


def cutoffs(settings: Settings, workdir):
    """Orthogonal Fisher divergence of the full-space model for every level; writes cutoffs.json and cutoffs.png."""
    sub = settings.subspace
    if not sub.levels:
        raise ValueError('--mode=cutoffs needs a subspace chain: set config.subspace.levels >= 1')
    exp = Experiment.build(settings, levels=(0,))
    loaded = loading.load_levels(settings, (0,), workdir)
    step = loaded.sources[0]['step']
    # One file per workdir (what the benchmarks and the suggested cutoffs read): never silently replaced.
    path = os.path.join(workdir, 'cutoffs.json')
    inputs = {'step': step, 'subspace.cutoff_threshold': sub.cutoff_threshold,
              'subspace.cutoff_num_examples': sub.cutoff_num_examples, 'subspace.cutoff_times_num': sub.cutoff_times_num,
              'subspace.cutoff_batch_size': sub.cutoff_batch_size, 'seed': settings.seed, 'sde': settings.sde.kind,
              'chain': exp.chain.signature(), 'data': content_id(settings.data, 'train')}
    _check_earlier(path, inputs)
    subspace = exp.subspace(statistics.load(settings, exp.chain, workdir))
    score = exp.networks.score(exp.networks.named(loaded.params), 0)
    sde, chain = settings.sde, exp.chain
    ts = np.linspace(sde.sampling_eps, sde.T, sub.cutoff_times_num)
    n = sub.cutoff_num_examples
    logging.info('cutoffs of the %s: full-space model at step %d, %d times in [%.0e, %g], up to %d training '
                 'examples', subspace.describe(), step, len(ts), ts[0], ts[-1], n)
    levels = []
    for k in range(1, chain.num_levels + 1):
        t0 = time.perf_counter()
        seen = []
        # The same key for every level: all curves see the same x_t, so they compare without extra noise.
        curve = fisher_divergence_curve(jax.random.PRNGKey(settings.seed), sde, subspace, k, score,
                                        _take(training_images(settings.data, sub.cutoff_batch_size), n, seen), ts)
        cutoff = choose_cutoff(ts, curve, sub.cutoff_threshold)
        levels.append({'level': k, 'shape': list(chain.shapes[k]), 'divergence': curve.tolist(), 'cutoff': cutoff})
        logging.info('level %d (%s): D(t) from %.3e at t=%.2g to %.3e at t=%g; cutoff at %g: %s (%.1fs)', k,
                     'x'.join(map(str, chain.shapes[k])), curve[0], ts[0], curve[-1], ts[-1], sub.cutoff_threshold,
                     'none (D never falls below)' if cutoff is None else f'{cutoff:.3f}', time.perf_counter() - t0)
    if sum(seen) < n:
        logging.info('the training set holds %d examples, fewer than subspace.cutoff_num_examples=%d: D(t) averaged '
                     'over those', sum(seen), n)
    result = {'step': step, 'threshold': sub.cutoff_threshold, 'num_examples': sum(seen), 'sde': sde.kind,
              'ts': ts.tolist(), 'levels': levels, 'inputs': inputs}
    atomic_json(path, result)
    plot_cutoffs(result, os.path.join(workdir, 'cutoffs.png'))
    chosen = [row['cutoff'] for row in levels]
    if all(c is not None for c in chosen):
        logging.info('suggested: --config.subspace.cutoffs="(%s)"', ', '.join(f'{c:.3f}' for c in chosen))
    logging.info('wrote %s and cutoffs.png', path)
    return result


def plot_cutoffs(result, path):
    """Log-scale D(t) per level with the threshold and the chosen cutoffs, as a PNG (matplotlib, Agg)."""
    import matplotlib  # only this plot needs it
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for row in result['levels']:
        line, = ax.semilogy(result['ts'], np.maximum(row['divergence'], 1e-12), marker='o', markersize=3,
                            label=f"level {row['level']} ({'x'.join(map(str, row['shape'][:2]))})")
        if row['cutoff'] is not None:
            ax.axvline(row['cutoff'], color=line.get_color(), linestyle=':', linewidth=1)
    ax.axhline(result['threshold'], color='k', linestyle='--', linewidth=1, label=f"threshold {result['threshold']:g}")
    ax.set_xlabel('t')
    ax.set_ylabel('orthogonal Fisher divergence D(t)')
    ax.set_title(f"{result['sde'].upper()} model, step {result['step']}, {result['num_examples']} examples")
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
