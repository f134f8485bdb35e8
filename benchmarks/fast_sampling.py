"""Quality against effective NFE: PC vs Heun vs DPM-Solver++(2M), full space vs the 2-level pooling chain.

    python benchmarks/fast_sampling.py --workdir runs/quality     # after benchmarks/quality.py (same workdir)

The trained digits networks of benchmarks/quality.py (full space, pooling levels 1 and 2, its cutoffs at
3e-3). For each effective-NFE target (--nfe) and method: PC with the grid size whose effective NFE is
closest to the target (reverse diffusion + Langevin, as configs/quality_digits.py), Heun and DPM-Solver++
with that budget (stages split by --rule); --samples samples per seed for --seeds; the digits-classifier and
pixel Frechet distances against the test split, and wall time per sample (compilation excluded). Then the
two budget rules on the chain, at --rule_nfe. Results: benchmarks/results/fast_sampling.json and
docs/fast_sampling.png.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from results import save_result  # noqa: E402

from configs import quality_digits  # noqa: E402
from subspace_diffusion.core.sampling import cost, make_sampler  # noqa: E402
from subspace_diffusion.evaluation.quality import Scorer  # noqa: E402
from subspace_diffusion.formats.images import to_uint8  # noqa: E402
from subspace_diffusion.run import data, loading, statistics  # noqa: E402
from subspace_diffusion.run.experiment import Experiment  # noqa: E402
from subspace_diffusion.run.progress import fmt_duration  # noqa: E402
from subspace_diffusion.run.settings import Settings  # noqa: E402

METHODS = ('pc', 'ode_heun', 'dpm_solver++')


def _settings(cutoffs, levels, method, budget, rule):
    config = quality_digits.get_config()
    config.subspace.levels, config.subspace.cutoffs = levels, tuple(cutoffs[:levels])
    config.sampling.method, config.sampling.nfe_budget, config.sampling.budget_rule = method, budget, rule
    return Settings.from_config(config)


def _pc_steps(sampling, diffusion, target):
    """The PC grid size whose effective NFE on `diffusion` is closest to `target` (at least one point per stage)."""
    best = None
    for n in range(4, 2 * int(target) + 8):
        cfg = dataclasses.replace(sampling, pc=dataclasses.replace(sampling.pc, num_steps=n))
        try:
            nfe = cost(diffusion, cfg).effective_nfe
        except ValueError:  # a stage without grid points
            continue
        if best is None or abs(nfe - target) < abs(best[1] - target):
            best = (n, nfe)
    return best[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'quality'))
    parser.add_argument('--nfe', type=float, nargs='+', default=[10, 20, 35, 50, 100, 200])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--samples', type=int, default=128)
    parser.add_argument('--rule', default='log_sigma')
    parser.add_argument('--rule_nfe', type=float, nargs='+', default=[20, 50])
    args = parser.parse_args()
    w = lambda *p: os.path.join(args.workdir, *p)
    with open(w('full', 'cutoffs_pooling.json')) as f:
        cutoffs = tuple(round(row['cutoff'], 3) for row in json.load(f)['levels'])
    spaces = {'full space': (0, ['full']), '2-level pooling': (2, ['full', 'pooling_1', 'pooling_2'])}
    runs = [(space, method, nfe, args.rule) for space in spaces for method in METHODS for nfe in args.nfe]
    runs += [('2-level pooling', method, nfe, rule) for method in METHODS[1:] for nfe in args.rule_nfe
             for rule in ('log_sigma', 'cost') if rule != args.rule]
    results, t0 = [], time.perf_counter()
    loaded = {}
    for i, (space, method, target, rule) in enumerate(runs):
        levels, dirs = spaces[space]
        settings = _settings(cutoffs, levels, method, float(target), rule)
        exp = Experiment.build(settings, tuple(range(levels + 1)))
        stats = statistics.load(settings, exp.chain, w('fast_sampling')) if levels else None
        diffusion = exp.diffusion(stats)
        sampling = settings.sampling
        if method == 'pc':
            sampling = dataclasses.replace(sampling, pc=dataclasses.replace(
                sampling.pc, num_steps=_pc_steps(sampling, diffusion, target)))
        if space not in loaded:
            settings_dirs = dataclasses.replace(settings, eval=dataclasses.replace(
                settings.eval, level_workdirs=tuple(w(d) for d in dirs)))
            loaded[space] = exp.networks.named(loading.load_levels(settings_dirs, exp.levels, args.workdir).params)
        sampler = make_sampler(diffusion, sampling, exp.networks.scores)
        nfe = sampler.cost.effective_nfe
        jax.block_until_ready(sampler.sample(loaded[space], jax.random.PRNGKey(99), args.samples)[0])  # compile
        scorer = Scorer(settings, w('fast_sampling'))
        per_seed = []
        for seed in args.seeds:
            start = time.perf_counter()
            x = np.asarray(sampler.sample(loaded[space], jax.random.PRNGKey(seed), args.samples)[0])
            seconds = time.perf_counter() - start
            m = scorer.score(to_uint8(data.get_inverse_scaler(settings.data.centered)(x)))
            per_seed.append({'seed': seed, 'classifier_fd': m['classifier_fd'],
                             'pixel_fd': m['pixel_fd'], 's_per_sample': seconds / args.samples})
        row = {'space': space, 'method': method, 'nfe_target': target, 'budget_rule': rule,
               'effective_nfe': nfe, 'pc_steps': sampling.pc.num_steps if method == 'pc' else None,
               'runs': per_seed}
        for key in ('classifier_fd', 'pixel_fd', 's_per_sample'):
            values = [r[key] for r in per_seed]
            row[key] = {'mean': float(np.mean(values)), 'std': float(np.std(values, ddof=1))}
        results.append(row)
        done = time.perf_counter() - t0
        print(f'[{i + 1}/{len(runs)}] {space}, {method}, target {target:g} ({rule}): NFE {nfe:.1f}, classifier FD '
              f'{row["classifier_fd"]["mean"]:.3f} +- {row["classifier_fd"]["std"]:.3f}, '
              f'{1e3 * row["s_per_sample"]["mean"]:.1f} ms/sample; ETA '
              f'{fmt_duration(done / (i + 1) * (len(runs) - i - 1))}', flush=True)
    _plot(results, args.rule, os.path.join(ROOT, 'docs', 'fast_sampling.png'))
    save_result('fast_sampling', {
        'command': 'python benchmarks/fast_sampling.py --workdir runs/quality', 'config': 'configs/quality_digits.py',
        'cutoffs': cutoffs, 'samples_per_seed': args.samples, 'seeds': args.seeds,
        'device': f'{jax.devices()[0].device_kind} ({jax.default_backend()})', 'results': results,
        'notes': 'std over seeds (ddof=1); Frechet distances from the samples of one seed against the 299 test '
                 'digits; wall time per sample excludes compilation'})


def _plot(results, rule, path):
    """Classifier FD and ms per sample against effective NFE, one line per space and method."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for space, style in (('full space', '-'), ('2-level pooling', '--')):
        for method, color in zip(METHODS, ('C0', 'C1', 'C2')):
            rows = sorted((r for r in results if r['space'] == space and r['method'] == method
                           and r['budget_rule'] == rule), key=lambda r: r['effective_nfe'])
            nfe = [r['effective_nfe'] for r in rows]
            label = f'{space}, {method}'
            axes[0].errorbar(nfe, [r['classifier_fd']['mean'] for r in rows],
                             yerr=[r['classifier_fd']['std'] for r in rows], linestyle=style, color=color,
                             marker='o', markersize=3, capsize=2, label=label)
            axes[1].plot(nfe, [1e3 * r['s_per_sample']['mean'] for r in rows], linestyle=style, color=color,
                         marker='o', markersize=3, label=label)
    for ax, name in zip(axes, ('digits-classifier Frechet distance', 'ms per sample (2-core CPU)')):
        ax.set_xscale('log')
        ax.set_xlabel('effective NFE')
        ax.set_ylabel(name)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].set_yscale('log')
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == '__main__':
    main()
