"""The paper's claim on real images offline: Fashion-MNIST at CIFAR-10's chain shape (32 -> 16 -> 8 px).

    python benchmarks/real_images.py --data_dir /usr/share/datasets/fashion-mnist --steps 5000   # 75 min, 2 CPUs

One resumable command of main.py steps on configs/fashion_mnist.py (each printed as it runs, its log kept in
<workdir>/logs; rerun the same command to continue after an interruption):
1. train the full-space 32 px network to --steps; choose the cutoffs of the 16 px and 8 px levels with
   --mode=cutoffs on it (orthogonal Fisher divergence at the default 3e-3);
2. train the 16 px and 8 px level networks, each on t ~ U(t_k, T) with those cutoffs;
3. evaluate with --seeds: the PC sampler at the config's steps in full space, the 1-level chain (32 -> 16)
   and the 2-level chain (32 -> 16 -> 8), with bits/dim of the first --bpd_examples test images; then Heun and
   DPM-Solver++ at --nfe effective NFE, full space and the 2-level chain. Each evaluation: classifier
   Frechet distance and KID (the CNN of metrics/classifier.py, trained here on the training split), pixel
   Frechet distance, effective NFE and wall time per sample, against the test split.
A network trained elsewhere with the same flags is the same run (the data order and every key follow the step, and
training.n_iters only ends the loop): benchmarks/training_runs.py's training seed 42 archives at --steps, copied
into <workdir>/<network>/checkpoints/archive/ with config_train.json (and samples/ for the figure), are reused,
and their training wall time is null in the JSON (the level networks' only where the cutoffs found here equal
the config's, which training_runs.py trains them with).
Results: benchmarks/results/fashion_mnist.json (per seed, mean and spread, training cost of each network),
docs/fashion_samples.png (full | 1-level | 2-level, seed 0), docs/fashion_cutoffs.png, docs/fashion_training.png.
"""
import argparse
import glob
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import fashion_mnist  # noqa: E402
from results import save_result  # noqa: E402
from steps import Steps, archived, log_seconds, over_seeds, read_metrics, sample_panels, share_classifier  # noqa: E402

CONFIG = os.path.join(ROOT, 'configs', 'fashion_mnist.py')
METRICS = ('classifier_fd', 'classifier_kid', 'pixel_fd', 'nfe_per_sample', 's_per_sample')
NETWORKS = {'full': 0, 'level_1': 1, 'level_2': 2}  # workdir -> the level its network serves
SPACES = {'full space': 0, '1-level chain': 1, '2-level chain': 2}  # name -> levels sampled


def _flags(workdir, data_dir, levels, cutoffs, **extra):
    flags = [f'--config={CONFIG}', f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
             f'--config.subspace.levels={levels}', f'--config.subspace.cutoffs={tuple(cutoffs[:levels])}']
    return flags + [f'--config.{k}={v}' for k, v in extra.items()]


def _folder(variant: str, seed: int) -> str:
    """The eval.folder of one variant's evaluation at one seed."""
    return f'{variant.replace(", ", "_").replace(" ", "_")}_seed{seed}'


def _variants(args):
    """[(name, space, method, extra config)] of every evaluation."""
    out = [(f'{space}, pc', space, 'pc', {'eval.enable_bpd': True}) for space in SPACES]
    out += [(f'{space}, {method} {nfe:g}', space, method, {'sampling.nfe_budget': float(nfe)})
            for method in ('ode_heun', 'dpm_solver++') for nfe in args.nfe for space in ('full space', '2-level chain')]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'fashion'))
    parser.add_argument('--data_dir', default=fashion_mnist.get_config().data.data_dir,
                        help='the folder of the Fashion-MNIST IDX files')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--nfe', type=float, nargs='+', default=[10, 20, 35])
    parser.add_argument('--bpd_examples', type=int, default=32)
    parser.add_argument('--steps', type=int, default=fashion_mnist.get_config().training.n_iters,
                        help='training steps of every network (the committed table: 5000)')
    args = parser.parse_args()
    w = lambda *p: os.path.join(args.workdir, *p)  # noqa: E731
    os.makedirs(w('logs'), exist_ok=True)
    config = fashion_mnist.get_config()
    n = args.steps
    variants = _variants(args)
    plan = {'train full': 1800, 'cutoffs': 200, 'train level_1': 500, 'train level_2': 300}
    plan.update({f'eval {v[0]}, seed {s}': 120 if v[2] == 'pc' else 40 for v in variants for s in args.seeds})
    steps = Steps(plan, logs=w('logs'))
    configured = config.subspace.cutoffs  # the full-space network and the cutoff analysis do not depend on them
    steps.run('train full', archived(w('full'), n), '--mode=train',
              *_flags(w('full'), args.data_dir, 2, configured, **{'training.n_iters': n}))
    steps.run('cutoffs', os.path.exists(w('full', 'cutoffs.json')), '--mode=cutoffs',
              *_flags(w('full'), args.data_dir, 2, configured))
    with open(w('full', 'cutoffs.json')) as f:
        found = [row['cutoff'] for row in json.load(f)['levels']]
    if None in found:
        sys.exit(f'a level has no cutoff at the threshold ({found}): train the full-space model longer')
    cutoffs = tuple(round(c, 3) for c in found)
    for name, level in list(NETWORKS.items())[1:]:
        steps.run(f'train {name}', archived(w(name), n), '--mode=train',
                  *_flags(w(name), args.data_dir, 2, cutoffs, **{'training.n_iters': n, 'subspace.train_level': level}))

    share_classifier(w('eval'))
    results = []
    for name, space, method, extra in variants:
        levels = SPACES[space]
        workdirs = '(' + ','.join(f'"{w(d)}"' for d in list(NETWORKS)[:levels + 1]) + ',)'
        runs = []
        for seed in args.seeds:
            metrics_path = w('eval', _folder(name, seed), f'step_{n}', 'metrics.json')
            flags = {'seed': seed, 'eval.folder': _folder(name, seed), 'eval.level_workdirs': workdirs,
                     'eval.begin_ckpt': n, 'eval.end_ckpt': n,
                     'eval.use_subspace': bool(levels), 'sampling.method': method,
                     'eval.bpd_num_examples': args.bpd_examples, 'eval.bpd_num_repeats': 1, **extra}
            steps.run(f'eval {name}, seed {seed}', os.path.exists(metrics_path), '--mode=eval',
                      *_flags(w('eval'), args.data_dir, levels, cutoffs, **flags))
            m = read_metrics(metrics_path)
            accuracy = m['classifier_test_accuracy']  # one classifier, cached in the eval workdir, serves every run
            runs.append({'seed': seed, **{k: m[k] for k in METRICS + (('bpd',) if 'bpd' in m else ())}})
        keys = [k for k in runs[0] if k != 'seed']
        results.append({'variant': name, 'space': space, 'method': method, 'levels': levels, 'runs': runs,
                        **over_seeds(name, runs, keys)})

    training = {}
    for name, level in NETWORKS.items():
        record = json.load(open(w(name, 'config_train.json')))
        log = steps.log_path(f'train {name}')  # absent for a network copied in from another run (see above)
        training[name] = {'level': level, 'px': 32 // 2 ** level, 'steps': n, 'batch': record['training']['batch_size'],
                          'wall_s': log_seconds(log) if os.path.exists(log) else None}
    _figures(w, args.seeds[0], n)
    save_result('fashion_mnist', {
        'command': f'python benchmarks/real_images.py --data_dir <the Fashion-MNIST IDX folder> --steps {n}',
        'config': 'configs/fashion_mnist.py', 'n_iters': n, 'seeds': args.seeds, 'cutoffs_at_3e-3': cutoffs,
        'classifier_test_accuracy': accuracy, 'training': training, 'variants': results,
        'wall_s': sum(log_seconds(p) for p in glob.glob(w('logs', '*.log'))),
        'notes': 'std is the sample standard deviation over seeds (ddof=1); Frechet distances and KID of 256 samples '
                 f'against the 10,000 test images; bits/dim of the first {args.bpd_examples} test images, one '
                 'dequantisation draw; wall time per sample excludes compilation (measured on later batches); '
                 'wall_s is the sum of every main.py step\'s logged time, over all invocations of the command'})


def _figures(w, seed, n):
    """docs/fashion_samples.png (full | 1-level | 2-level, seed `seed`), fashion_cutoffs.png, fashion_training.png."""
    docs = os.path.join(ROOT, 'docs')
    sample_panels([w('eval', _folder(f'{space}, pc', seed), f'step_{n}') for space in SPACES],
                  count=36, ncol=6, gap=8, scale=3, path=os.path.join(docs, 'fashion_samples.png'))
    shutil.copy(w('full', 'cutoffs.png'), os.path.join(docs, 'fashion_cutoffs.png'))
    shutil.copy(w('full', 'samples', f'step_{n:07d}.png'), os.path.join(docs, 'fashion_training.png'))


if __name__ == '__main__':
    main()
