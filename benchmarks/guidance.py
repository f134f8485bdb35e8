"""Class-conditional Fashion-MNIST with classifier-free guidance: full space against the 2-level chain.

    python benchmarks/guidance.py --data_dir /usr/share/datasets/fashion-mnist   # hours on 2 CPU cores

One resumable command (rerun it to continue; every finished step is skipped):
1. train the class-conditional 32 px, 16 px and 8 px networks of configs/fashion_mnist.py (model.num_classes=10,
   labels dropped with training.label_dropout=0.1) to --steps (default: the training-length study's 20,000),
   one run each, archived at the end;
2. evaluate, for every guidance weight w of --guidance and every seed of --seeds: full space, the 2-level chain
   lifting from the whole data set's statistics, and the chain lifting each sample from its class's
   (subspace.class_stats), each with --method (DPM-Solver++ at --nfe effective NFE by default, or the config's
   PC): --num_samples samples, every class in turn, scored by the Fashion-MNIST CNN of metrics/classifier.py
   (how often a requested class is seen as that class, the classifier Frechet distance of all samples against
   the 10,000 test images and of each class against that class's test images), the share of noise samples
   (benchmarks/noise_fraction.py's criterion), effective NFE (doubled by guidance) and wall time per sample.
Results: benchmarks/results/guidance.json, docs/guidance.png (accuracy, Frechet distances, noise share against w),
docs/guidance_samples.png (seed 0, one row per class, for each space at each w); another --method, --nfe or
--num_samples keeps its own evaluation folders and writes guidance_<tag>.json and figures beside them.
"""
import argparse
import glob
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import fashion_mnist  # noqa: E402
from results import save_result  # noqa: E402
from steps import (Steps, archived, eval_folder, joined, log_seconds, over_seeds, read_metrics, save_enlarged,  # noqa: E402
                   share_classifier)
from training_length import NETWORKS, STEPS_PER_S, cell, noise_share  # noqa: E402  (the study's networks, conditioned here)

CONFIG = os.path.join(ROOT, 'configs', 'fashion_mnist.py')
CLASSES = 10
# name -> (levels sampled, per-class lifts)
SPACES = {'full space': (0, False), '2-level chain': (2, False), '2-level chain, per-class lifts': (2, True)}
METRICS = ('requested_class_accuracy', 'classifier_fd', 'classifier_fd_class_mean', 'noise_share', 'nfe_per_sample',
           's_per_sample')
# Planned seconds of an evaluation per sample at 20 NFE on 2 cores, start-up included, for the ETA only (measured).
EVAL_S_PER_SAMPLE = 0.05


def _flags(workdir, args, **extra):
    flags = [f'--config={CONFIG}', f'--workdir={workdir}', f'--config.data.data_dir={args.data_dir}',
             f'--config.model.num_classes={CLASSES}', '--config.training.snapshot_sampling=False']
    return flags + [f'--config.{k}={v}' for k, v in extra.items()]


def _method(args) -> dict:
    """The sampler's settings: DPM-Solver++ at --nfe, or the config's PC."""
    return {} if args.method == 'pc' else {'sampling.method': 'dpm_solver++', 'sampling.nfe_budget': args.nfe}


def _tag(args) -> str:
    """What sets this run's evaluations apart beyond space, w and seed: '' for the default sampler and sample count
    (the committed results), else e.g. ' pc' or ' dpm_solver++ 10, 1000 samples', so no run reuses another's."""
    parts = [] if (args.method, args.nfe) == ('dpm_solver++', 20.0) else [
        'pc' if args.method == 'pc' else f'{args.method} {args.nfe:g}']
    parts += [] if args.num_samples == 500 else [f'{args.num_samples} samples']
    return ' ' + ', '.join(parts) if parts else ''


def _name(args) -> str:
    """The stem of the JSON and the figures: 'guidance', or 'guidance_pc' etc. for another sampler or count."""
    return 'guidance' + re.sub(r'\W+', '_', _tag(args)).rstrip('_')


def _folder(space: str, w: float, seed: int, args) -> str:
    """The eval.folder of one variant at one seed, the run's `_tag` appended."""
    return eval_folder(f'{space} w{w:g}{_tag(args)}', seed)


def _result(folder, step) -> str:
    return os.path.join(folder, f'step_{step}', 'metrics.json')


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'guidance'))
    parser.add_argument('--data_dir', default=fashion_mnist.get_config().data.data_dir,
                        help='the folder of the Fashion-MNIST IDX files')
    parser.add_argument('--steps', type=int, default=20000, help='training steps of every network')
    parser.add_argument('--guidance', type=float, nargs='+', default=[0.0, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--num_samples', type=int, default=500, help='samples per evaluation (every class in turn)')
    parser.add_argument('--method', choices=('dpm_solver++', 'pc'), default='dpm_solver++')
    parser.add_argument('--nfe', type=float, default=20.0, help="DPM-Solver++'s effective-NFE budget (before guidance)")
    parser.add_argument('--eval_batch', type=int, default=125)
    parser.add_argument('--output', default=None, help='a folder for guidance.json and the figures instead of '
                        'benchmarks/results/ and docs/ (a trial run)')
    args = parser.parse_args()
    w = lambda *p: os.path.join(args.workdir, *p)  # noqa: E731
    os.makedirs(w('logs'), exist_ok=True)
    plan = {f'train {name}': args.steps / rate for name, rate in STEPS_PER_S.items()}
    per_sample = EVAL_S_PER_SAMPLE * (10 if args.method == 'pc' else args.nfe / 20)  # PC: 200 NFE
    plan.update({f'eval {space}, w={g:g}{_tag(args)}, seed {seed}': args.num_samples * per_sample * (1 + (g != 0))
                 for space in SPACES for g in args.guidance for seed in args.seeds})
    steps = Steps(plan, logs=w('logs'))
    for name, level in NETWORKS.items():
        steps.run(f'train {name}', archived(w(name), args.steps), '--mode=train',
                  *_flags(w(name), args, **{'training.n_iters': args.steps, 'subspace.train_level': level}))
    level_dirs = '(' + ','.join(f'"{w(d)}"' for d in NETWORKS) + ',)'
    cutoffs = fashion_mnist.get_config().subspace.cutoffs
    share_classifier(w('eval'))
    for space, (levels, per_class) in SPACES.items():
        for g in args.guidance:
            for seed in args.seeds:
                folder = _folder(space, g, seed, args)
                flags = {'seed': seed, 'eval.folder': folder, 'eval.begin_ckpt': args.steps,
                         'eval.end_ckpt': args.steps, 'eval.level_workdirs': level_dirs,
                         'eval.use_subspace': bool(levels), 'subspace.levels': levels,
                         'subspace.cutoffs': tuple(cutoffs[:levels]), 'subspace.class_stats': per_class,
                         'sampling.guidance': g, 'eval.num_samples': args.num_samples,
                         'eval.batch_size': args.eval_batch, **_method(args)}
                steps.run(f'eval {space}, w={g:g}{_tag(args)}, seed {seed}',
                          os.path.exists(_result(w('eval', folder), args.steps)), '--mode=eval',
                          *_flags(w('eval'), args, **flags))
    given = ''.join(f' --{k} {" ".join(map(str, v)) if isinstance(v, list) else v}' for k, v in vars(args).items()
                    if k not in ('workdir', 'data_dir', 'output') and v != parser.get_default(k))
    result = _gather(w, args, 'python benchmarks/guidance.py --data_dir <the Fashion-MNIST IDX folder>' + given,
                     steps)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, _name(args) + '.json'), 'w') as f:
            json.dump(result, f, indent=2)
    else:
        save_result(_name(args), result)
    _figures(w, args, result, args.output or os.path.join(ROOT, 'docs'))
    print(_table(result))


def _gather(w, args, command: str, steps: Steps) -> dict:
    """The benchmark's JSON: every space, guidance weight and seed, with means and std over the seeds."""
    variants = []
    for space, (levels, per_class) in SPACES.items():
        for g in args.guidance:
            runs = []
            for seed in args.seeds:
                folder = w('eval', _folder(space, g, seed, args))
                m = read_metrics(_result(folder, args.steps))
                m['noise_share'] = noise_share(os.path.join(folder, f'step_{args.steps}'))
                assert all(src['step'] == args.steps for src in m['checkpoints'].values()), m['checkpoints']
                runs.append({'seed': seed, **{k: m[k] for k in METRICS},
                             'classifier_fd_per_class': m['classifier_fd_per_class']})
            entry = {'space': space, 'levels': levels, 'per_class_lifts': per_class, 'guidance': g, 'runs': runs}
            if len(runs) > 1:
                entry.update(over_seeds(f'{space}, w={g:g}', runs, METRICS))
            entry['classifier_fd_per_class_mean'] = {c: float(np.mean([r['classifier_fd_per_class'][c] for r in runs]))
                                                     for c in runs[0]['classifier_fd_per_class']}
            variants.append(entry)
    first = read_metrics(_result(w('eval', _folder('full space', args.guidance[0], args.seeds[0], args)),
                                 args.steps))
    return {
        'command': command,
        'config': 'configs/fashion_mnist.py with model.num_classes=10, training.label_dropout=0.1',
        'training_steps': args.steps, 'guidance': args.guidance, 'seeds': args.seeds,
        'num_samples': args.num_samples, 'method': args.method, 'nfe_budget': args.nfe if args.method != 'pc' else None,
        'cutoffs': list(fashion_mnist.get_config().subspace.cutoffs),
        'classifier_test_accuracy': first['classifier_test_accuracy'],
        'variants': variants,
        # this run's steps only: another --method's evaluations share the logs folder
        'wall_s': sum(log_seconds(p) for p in map(steps.log_path, steps.plan) if os.path.exists(p)),
        'notes': f'{args.num_samples} samples per evaluation, every class in turn ({args.num_samples // CLASSES} a '
                 'class): the per-class Frechet distances come from that few samples in 128 feature dimensions and '
                 'are biased upwards alike for every variant; nfe_per_sample counts both evaluations of a guided '
                 'call; wall time per sample excludes compilation; std (ddof=1) over the seeds; wall_s sums the '
                 'logged main.py steps of this run (the trainings included) over all invocations'}


def _table(result) -> str:
    """The README's markdown table: every space and guidance weight, mean ± std over the seeds."""
    head = ['variant', 'w', 'effective NFE', 'accuracy on the requested class', 'classifier FD',
            'classifier FD per class (mean)', 'noise share', 'ms per sample']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for v in result['variants']:
        lines.append('| ' + ' | '.join([v['space'], f"{v['guidance']:g}", f"{v['runs'][0]['nfe_per_sample']:.1f}",
                                        cell(v, 'requested_class_accuracy', 3), cell(v, 'classifier_fd', 2),
                                        cell(v, 'classifier_fd_class_mean', 2), cell(v, 'noise_share', 3),
                                        cell(v, 's_per_sample', 0, scale=1000)]) + ' |')
    return '\n'.join(lines)


def class_rows(folder, per_class: int) -> np.ndarray:
    """The first `per_class` samples of every class of an eval folder, one row per class: (10 * per_class, H, W, C)."""
    samples, labels = [], []
    for path in sorted(glob.glob(os.path.join(folder, 'samples_*.npz')), key=lambda p: int(re.findall(r'\d+', p)[-1])):
        with np.load(path) as f:
            samples.append(f['samples'])
            labels.append(f['labels'])
    samples, labels = np.concatenate(samples), np.concatenate(labels)
    return np.concatenate([samples[labels == c][:per_class] for c in range(CLASSES)])


def _figures(w, args, result: dict, folder):
    """<name>.png (accuracy on the requested class, Frechet distances, noise share against w) and
    <name>_samples.png (seed 0: one panel per space and w, one row per class) in `folder` (docs/); `_name`."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from subspace_diffusion.formats.images import image_grid
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    keys = ('requested_class_accuracy', 'classifier_fd', 'classifier_fd_class_mean', 'noise_share')
    labels = ('classifier accuracy on the requested class', 'classifier Frechet distance (all samples)',
              'classifier Frechet distance per class (mean)', 'noise share of the samples')
    for space in SPACES:
        rows = [v for v in result['variants'] if v['space'] == space]
        xs = [v['guidance'] for v in rows]
        for ax, key in zip(axes, keys):
            ys = [np.mean([r[key] for r in v['runs']]) for v in rows]
            err = [np.std([r[key] for r in v['runs']], ddof=1) if len(v['runs']) > 1 else 0 for v in rows]
            ax.errorbar(xs, ys, yerr=err, capsize=3, marker='o', label=space)
    for ax, label in zip(axes, labels):
        ax.set(xlabel='guidance w', ylabel=label)
    for ax in axes[1:3]:  # full space's distances are several times the chain's
        ax.set_yscale('log')
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, _name(args) + '.png'), dpi=110)
    per_class, seed = min(6, args.num_samples // CLASSES), args.seeds[0]
    panels = [image_grid(class_rows(os.path.join(w('eval', _folder(space, g, seed, args)), f'step_{args.steps}'),
                                    per_class) / 255., ncol=per_class) for space in SPACES for g in args.guidance]
    n = len(args.guidance)
    lines = [joined(panels[i * n:(i + 1) * n], 8) for i in range(len(SPACES))]
    save_enlarged(joined(lines, 8, axis=0), 2, os.path.join(folder, _name(args) + '_samples.png'))


if __name__ == '__main__':
    main()
