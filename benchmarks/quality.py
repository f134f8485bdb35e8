"""Sample quality against cost on the offline digits: full space vs subspace chains, trained networks, several seeds.

    python benchmarks/quality.py --workdir runs/quality        # about 75 min on 2 CPU cores; rerun to resume

Every step is a main.py command on configs/quality_digits.py (printed as it runs), so each can be rerun
alone; finished steps are skipped on a rerun (trainings resume from their checkpoints, evaluations keep
their shards). Steps:
1. train the full-space 16x16 network; pick the cutoffs of each chain kind with --mode=cutoffs at the
   default threshold (3e-3) on it;
2. train the subspace networks of 2-level chains 16 -> 8 -> 4: pooling, patch-PCA, PCA (an MLP on the
   coordinate vectors), each level in its own run; and one network shared by the pooling levels;
3. evaluate at the same number of steps (sampling.num_steps): full space; the 1-level and 2-level pooling
   chains; the 2-level patch-PCA and PCA chains; the shared network's 2-level chain; each with seeds
   --seeds: classifier and pixel Frechet distances against the test split (256 samples), bits/dim of 32
   test images, effective NFE, wall time per sample.
Results: benchmarks/results/quality.json (per seed, mean and spread), docs/quality_samples.png (full |
1-level | 2-level, the same seed), docs/quality_cutoffs.png (the pooling chain's Fisher divergence).
"""
import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from results import save_result  # noqa: E402
from steps import Steps, archived, over_seeds, read_metrics, sample_panels  # noqa: E402

CONFIG = os.path.join(ROOT, 'configs', 'quality_digits.py')
KINDS = ('pooling', 'patch_pca', 'pca')
# name -> (chain kind, levels, workdir of each level (None: the full-space run), shared network)
VARIANTS = {
    'full space': ('pooling', 0, ['full'], False),
    '1-level pooling': ('pooling', 1, ['full', 'pooling_1'], False),
    '2-level pooling': ('pooling', 2, ['full', 'pooling_1', 'pooling_2'], False),
    '2-level patch-PCA': ('patch_pca', 2, ['full', 'patch_pca_1', 'patch_pca_2'], False),
    '2-level PCA': ('pca', 2, ['full', 'pca_1', 'pca_2'], False),
    '2-level pooling, shared network': ('pooling', 2, ['shared'] * 3, True),
}
METRICS = ('classifier_fd', 'pixel_fd', 'bpd', 'nfe_per_sample', 's_per_sample')


def _flags(workdir, kind, levels, cutoffs, **extra):
    flags = [f'--config={CONFIG}', f'--workdir={workdir}', f'--config.subspace.kind={kind}',
             f'--config.subspace.levels={levels}', f'--config.subspace.cutoffs={tuple(cutoffs)}']
    return flags + [f'--config.{k}={v}' for k, v in extra.items()]


def _eval_dir(variant):
    return 'eval_' + variant.replace(' ', '_').replace(',', '')


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'quality'))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--n_iters', type=int, default=3000)
    args = parser.parse_args()
    w = lambda *p: os.path.join(args.workdir, *p)
    os.makedirs(args.workdir, exist_ok=True)
    placeholder = (0.5, 0.6)
    train_plan = {'full': 600, 'pooling_1': 180, 'pooling_2': 120, 'patch_pca_1': 180, 'patch_pca_2': 120,
                  'pca_1': 60, 'pca_2': 60, 'shared': 700}
    plan = {f'train {name}': cost for name, cost in train_plan.items()}
    plan.update({f'cutoffs {kind}': 90 for kind in KINDS})
    plan.update({f'eval {v}, seed {s}': 100 for v in VARIANTS for s in args.seeds})
    steps = Steps(plan)  # main.py's compilation cache is shared by the evaluations' processes
    n = args.n_iters
    common = {'training.n_iters': n, 'training.snapshot_freq': n}

    steps.run('train full', archived(w('full'), n), '--mode=train',
              *_flags(w('full'), 'pooling', 2, placeholder, **common, **{'subspace.train_level': 0}))
    cutoffs = {}
    for kind in KINDS:
        path = w('full', f'cutoffs_{kind}.json')
        steps.run(f'cutoffs {kind}', os.path.exists(path), '--mode=cutoffs',
                  *_flags(w('full'), kind, 2, placeholder))
        if not os.path.exists(path):  # moved: --mode=cutoffs never replaces another chain's cutoffs.json
            shutil.move(w('full', 'cutoffs.json'), path)
            shutil.move(w('full', 'cutoffs.png'), path[:-4] + 'png')
        with open(path) as f:
            found = [row['cutoff'] for row in json.load(f)['levels']]
        if None in found:
            sys.exit(f'the {kind} chain has no cutoff at the threshold ({found}): train the full model longer')
        cutoffs[kind] = tuple(round(c, 3) for c in found)
    for kind in KINDS:
        for level in (1, 2):
            name = f'{kind}_{level}'
            steps.run(f'train {name}', archived(w(name), n), '--mode=train',
                      *_flags(w(name), kind, 2, cutoffs[kind], **common, **{'subspace.train_level': level}))
    steps.run('train shared', archived(w('shared'), n), '--mode=train',
              *_flags(w('shared'), 'pooling', 2, cutoffs['pooling'], **common,
                      **{'subspace.train_level': -1, 'subspace.shared_params': True}))

    results = {}
    for variant, (kind, levels, dirs, shared) in VARIANTS.items():
        workdir = w(_eval_dir(variant))
        runs = []
        for seed in args.seeds:
            folder = os.path.join(workdir, f'seed_{seed}', f'step_{n}')
            workdirs = '(' + ','.join(f'"{w(d)}"' for d in dirs) + ',)'
            extra = {'seed': seed, 'eval.folder': f'seed_{seed}', 'eval.level_workdirs': workdirs,
                     'eval.use_subspace': bool(levels)}
            steps.run(f'eval {variant}, seed {seed}', os.path.exists(os.path.join(folder, 'metrics.json')),
                      '--mode=eval', *_flags(workdir, kind, levels, cutoffs[kind][:levels], **extra))
            m = read_metrics(os.path.join(folder, 'metrics.json'))
            runs.append({'seed': seed, **{k: m[k] for k in METRICS}, 'space': m['space']})
        results[variant] = {'chain': kind if levels else 'none', 'levels': levels, 'shared_network': shared,
                            'runs': runs, **over_seeds(variant, runs, METRICS)}

    _figures(w, args.seeds[0], n)
    save_result('quality', {
        'command': 'python benchmarks/quality.py --workdir runs/quality', 'config': 'configs/quality_digits.py',
        'n_iters': n, 'seeds': args.seeds, 'cutoffs_at_3e-3': cutoffs, 'variants': results,
        'wall_s': time.perf_counter() - steps.t0,
        'notes': 'std is the sample standard deviation over seeds (ddof=1); FDs against the 299 test digits '
                 'from 256 samples; bits/dim over the first 32 test images, one dequantisation draw'})


def _figures(w, seed, n):
    """docs/quality_samples.png: 16 samples of seed `seed` per variant side by side; docs/quality_cutoffs.png."""
    docs = os.path.join(ROOT, 'docs')
    sample_panels([w(_eval_dir(v), f'seed_{seed}', f'step_{n}') for v in ('full space', '1-level pooling',
                                                                          '2-level pooling')],
                  count=16, ncol=4, gap=6, scale=4, path=os.path.join(docs, 'quality_samples.png'))
    shutil.copy(w('full', 'cutoffs_pooling.png'), os.path.join(docs, 'quality_cutoffs.png'))


if __name__ == '__main__':
    main()
