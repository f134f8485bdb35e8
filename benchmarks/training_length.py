"""Does the subspace advantage survive training? Fashion-MNIST networks trained to 20,000 steps, measured on the way.

    python benchmarks/training_length.py --data_dir /usr/share/datasets/fashion-mnist   # hours on 2 CPU cores

One resumable command (rerun it to continue; every finished step is skipped). For each stage s of --stages:
1. train the full-space 32 px, 16 px and 8 px networks of configs/fashion_mnist.py to step s (one run each,
   resumed from the previous stage: the data stream and randomness are functions of the step, so a staged run
   is the uninterrupted run), archived at s;
2. evaluate at s (seed 0; every --seeds at the last stage): full space, 1-level and 2-level chain, each with PC
   (the config's 100 steps) and DPM-Solver++ at 20 effective NFE: classifier Frechet distance and KID (the CNN
   of metrics/classifier.py), pixel Frechet distance, noise share (benchmarks/noise_fraction.py), effective NFE
   and wall time per sample, 256 samples against the 10,000 test images;
3. why the full-space probability flow fails, at s (benchmarks/flow_failure.py).
Then --mode=cutoffs on the last full-space network: are 0.629 / 0.673 still where the Fisher divergence
crosses 3e-3? Results: benchmarks/results/training_length.json, docs/training_length.png (quality and flow
against training steps), docs/training_length_samples.png (the last stage, seed 0).
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from configs import fashion_mnist  # noqa: E402
from noise_fraction import THRESHOLD, folder_samples, roughness  # noqa: E402
from results import save_result  # noqa: E402
from steps import Steps, archived, eval_folder, log_seconds, over_seeds, read_metrics, sample_panels  # noqa: E402
from tensorboard_events import scalars  # noqa: E402

CONFIG = os.path.join(ROOT, 'configs', 'fashion_mnist.py')
NETWORKS = {'full': 0, 'level_1': 1, 'level_2': 2}  # workdir -> the level its network serves
SPACES = {'full space': 0, '1-level chain': 1, '2-level chain': 2}  # name -> levels sampled
METHODS = {'pc': {}, 'dpm_solver++ 20': {'sampling.method': 'dpm_solver++', 'sampling.nfe_budget': 20.0}}
METRICS = ('classifier_fd', 'classifier_kid', 'pixel_fd', 'noise_share', 'nfe_per_sample', 's_per_sample')
# Planned seconds per step on 2 cores, for the ETA only: training steps/s by network (measured unhindered),
# evaluations by method.
STEPS_PER_S = {'full': 2.0, 'level_1': 8.0, 'level_2': 18.0}
EVAL_S = {'pc': 400, 'dpm_solver++ 20': 120}
FLOW_S = 900


def _flags(workdir, data_dir, **extra):
    flags = [f'--config={CONFIG}', f'--workdir={workdir}', f'--config.data.data_dir={data_dir}']
    return flags + [f'--config.{k}={v}' for k, v in extra.items()]


def _folder(space: str, method: str, seed: int) -> str:
    """The eval.folder of one variant at one seed."""
    return eval_folder(f'{space} {method}', seed)


def noise_share(folder) -> float:
    """Share of an eval folder's samples that are noise (benchmarks/noise_fraction.py's criterion)."""
    return float(np.mean(roughness(folder_samples(folder)) > THRESHOLD))


def _seeds_at(stage, args):
    return args.seeds if stage == args.stages[-1] else args.seeds[:1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'study'))
    parser.add_argument('--data_dir', default=fashion_mnist.get_config().data.data_dir,
                        help='the folder of the Fashion-MNIST IDX files')
    parser.add_argument('--stages', type=int, nargs='+', default=[2500, 5000, 10000, 20000])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--report', action='store_true',
                        help='run nothing: write the JSON and figures of the stages finished so far')
    args = parser.parse_args()
    w = lambda *p: os.path.join(args.workdir, *p)  # noqa: E731
    os.makedirs(w('logs'), exist_ok=True)
    plan, previous = {}, 0
    for s in args.stages:
        plan.update({f'train {name} to {s}': (s - previous) / rate for name, rate in STEPS_PER_S.items()})
        plan.update({f'eval {space}, {method} at {s}, seed {seed}': EVAL_S[method]
                     for space in SPACES for method in METHODS for seed in _seeds_at(s, args)})
        plan[f'flow at {s}'] = FLOW_S
        previous = s
    plan['cutoffs'] = 600
    steps = Steps(plan, logs=w('logs'))
    if args.report:
        _report(w, args, steps)
        return
    for s in args.stages:
        train(steps, w, args.data_dir, s)
        evaluate(steps, w, args.data_dir, s, _seeds_at(s, args))
        steps.run(f'flow at {s}', os.path.exists(w('flow', f'step_{s}.json')), f'--step={s}',
                  f'--workdir={args.workdir}', f'--data_dir={args.data_dir}', script='benchmarks/flow_failure.py')
    steps.run('cutoffs', os.path.exists(w('full', 'cutoffs.json')), '--mode=cutoffs',
              *_flags(w('full'), args.data_dir))
    _report(w, args, steps)


def train(steps, w, data_dir, s, networks=tuple(NETWORKS), label='', **extra):
    """Train each of `networks` (NETWORKS' names) in w(name) to step s, archived there; `extra` config flags."""
    for name in networks:
        steps.run(f'train {label}{name} to {s}', archived(w(name), s), '--mode=train',
                  *_flags(w(name), data_dir, **{'training.n_iters': s, 'subspace.train_level': NETWORKS[name],
                                                **extra}))


def evaluate(steps, w, data_dir, s, seeds, spaces=SPACES, label='', **extra):
    """Score every space of `spaces` x METHODS x seeds at step s in w('eval'), from the networks in w(name)."""
    cutoffs = fashion_mnist.get_config().subspace.cutoffs
    used = [name for name, level in NETWORKS.items() if level <= max(spaces.values())]
    level_dirs = '(' + ','.join(f'"{w(name)}"' for name in used) + ',)'
    for space, levels in spaces.items():
        for method, method_flags in METHODS.items():
            for seed in seeds:
                folder = _folder(space, method, seed)
                flags = {'seed': seed, 'eval.folder': folder, 'eval.begin_ckpt': s, 'eval.end_ckpt': s,
                         'eval.level_workdirs': level_dirs, 'eval.use_subspace': bool(levels),
                         'subspace.levels': levels, 'subspace.cutoffs': tuple(cutoffs[:levels]), **method_flags,
                         **extra}
                steps.run(f'eval {label}{space}, {method} at {s}, seed {seed}', evaluated(w, space, method, seed, s),
                          '--mode=eval', *_flags(w('eval'), data_dir, **flags))


def evaluated(w, space, method, seed, s) -> bool:
    """Whether w('eval') holds the scores of one variant at one seed and step."""
    return os.path.exists(w('eval', _folder(space, method, seed), f'step_{s}', 'metrics.json'))


def scores(w, space, method, seed, s) -> dict:
    """METRICS of one evaluation in w('eval') (noise share computed from its samples), with its seed."""
    folder = w('eval', _folder(space, method, seed), f'step_{s}')
    m = read_metrics(os.path.join(folder, 'metrics.json'))
    m['noise_share'] = noise_share(folder)
    assert all(src['step'] == s for src in m['checkpoints'].values()), (folder, m['checkpoints'])
    return {'seed': seed, **{k: m[k] for k in METRICS}}


def _finished(w, args, s) -> bool:
    return os.path.exists(w('flow', f'step_{s}.json')) and all(
        evaluated(w, space, method, seed, s) for space in SPACES for method in METHODS for seed in _seeds_at(s, args))


def _report(w, args, steps):
    """Write the JSON and figures of every finished stage (all of them once the study is done)."""
    stages = [s for s in args.stages if _finished(w, args, s)]
    if not stages:
        sys.exit('no stage is finished yet: run the study first')
    result = _gather(w, args, steps, stages)
    save_result('training_length', result)
    _figures(w, result, args.seeds[0])
    print(_table(result))


def cell(stage, key, digits, scale: float = 1.0) -> str:
    """'mean ± std' over a stage's seeds, or the one seed's value, of `key` times `scale`."""
    values = [scale * r[key] for r in stage['runs']]
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}'


def _table(result) -> str:
    """The README's markdown table: classifier FD at every stage, then the last stage in full."""
    stages, last = result['stages'], result['stages'][-1]
    head = ['variant', 'effective NFE'] + [f'classifier FD at {s}' for s in stages] + [
        f'{k} at {last}' for k in ('noise share', 'pixel FD', 'classifier KID', 'ms per sample')]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for v in result['variants']:
        end = v['stages'][-1]
        cells = [v['variant'], f"{end['runs'][0]['nfe_per_sample']:.1f}"] + [
            cell(st, 'classifier_fd', 2) for st in v['stages']] + [
            cell(end, 'noise_share', 3), cell(end, 'pixel_fd', 2), cell(end, 'classifier_kid', 3),
            cell(end, 's_per_sample', 0, scale=1000)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _training(w, stages, steps) -> dict:
    """Per network and stage: wall seconds of that stage's training (None where it ran before the driver logged
    it) and the mean training loss over the stage's last 1,000 steps."""
    out = {}
    for name, level in NETWORKS.items():
        losses, rows = scalars(w(name, 'tensorboard'), 'train/loss'), []
        for s in stages:
            log = steps.log_path(f'train {name} to {s}')
            tail = [v for step, v in losses.items() if s - 1000 < step <= s]
            rows.append({'step': s, 'wall_s': (log_seconds(log) or None) if os.path.exists(log) else None,
                         'train_loss_last_1000_steps': float(np.mean(tail)) if tail else None})
        out[name] = {'level': level, 'px': 32 // 2 ** level, 'stages': rows}
    return out


def _gather(w, args, steps, stages) -> dict:
    """The study's JSON: every finished stage, variant and seed, the flow diagnostics, training costs and the
    cutoffs (once found)."""
    variants = []
    for space, levels in SPACES.items():
        for method in METHODS:
            rows = []
            for s in stages:
                runs = [scores(w, space, method, seed, s) for seed in _seeds_at(s, args)]
                entry = {'step': s, 'runs': runs}
                if len(runs) > 1:
                    entry.update(over_seeds(f'{space}, {method} at {s}', runs, METRICS))
                rows.append(entry)
            variants.append({'variant': f'{space}, {method}', 'space': space, 'levels': levels, 'method': method,
                             'stages': rows})
    flow = {}
    for s in stages:
        with open(w('flow', f'step_{s}.json')) as f:
            flow[str(s)] = json.load(f)
    found = None
    if os.path.exists(w('full', 'cutoffs.json')):
        with open(w('full', 'cutoffs.json')) as f:
            found = [row['cutoff'] for row in json.load(f)['levels']]
    with open(w('eval', _folder('full space', 'pc', args.seeds[0]), f'step_{stages[0]}', 'metrics.json')) as f:
        accuracy = json.load(f)['classifier_test_accuracy']
    return {
        'command': 'python benchmarks/training_length.py --data_dir <the Fashion-MNIST IDX folder>',
        'config': 'configs/fashion_mnist.py', 'stages_planned': args.stages, 'stages': stages,
        'complete': stages == args.stages and found is not None, 'seeds': args.seeds,
        'cutoffs_used': list(fashion_mnist.get_config().subspace.cutoffs),
        'cutoffs_at_3e-3_last_stage': found, 'classifier_test_accuracy': accuracy,
        'training': _training(w, stages, steps), 'variants': variants, 'flow': flow,
        'wall_s': sum(log_seconds(p) for p in glob.glob(w('logs', '*.log'))),
        'notes': 'one training run per network, archived at every stage; seed 0 at the intermediate stages, '
                 'std (ddof=1) over the seeds at the last; Frechet distances and KID of 256 samples against the '
                 '10,000 test images; wall time per sample excludes compilation; noise share: mean neighbour-pixel '
                 f'difference above {THRESHOLD}; wall_s sums every logged main.py step over all invocations'}


def _figures(w, result, seed):
    """docs/training_length.png (quality, noise share and the flow against training steps) and the last stage's
    sample grids (docs/training_length_samples.png)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    for v in result['variants']:
        xs = [st['step'] for st in v['stages']]
        style = dict(marker='o', ls='-' if v['method'] == 'pc' else '--', label=v['variant'])
        for ax, key in zip(axes[:2], ('classifier_fd', 'noise_share')):
            ys = [np.mean([r[key] for r in st['runs']]) for st in v['stages']]
            err = [np.std([r[key] for r in st['runs']], ddof=1) if len(st['runs']) > 1 else 0 for st in v['stages']]
            ax.errorbar(xs, ys, yerr=err, capsize=3, **style)
    axes[0].set(xscale='log', yscale='log', xlabel='training steps', ylabel='classifier Frechet distance')
    axes[1].set(xscale='log', xlabel='training steps', ylabel='noise share of the samples')
    axes[0].legend(fontsize=7)
    for s in result['stages']:
        traj = result['flow'][str(s)]['trajectories']['full space, adaptive ode']['excess']
        axes[2].plot(traj['sigma'], traj['median'], label=f'step {s}')
        restarts = result['flow'][str(s)]['restarts']
        axes[3].plot([r['sigma'] for r in restarts], [r['noise_share'] for r in restarts], marker='o', label=f'step {s}')
    chain = result['flow'][str(result['stages'][-1])]['trajectories']['2-level chain, adaptive ode']['excess']
    axes[2].plot(chain['sigma'], chain['median'], 'k--', label=f'2-level chain, step {result["stages"][-1]}')
    axes[2].set(xscale='log', yscale='symlog', xlabel='sigma(t)', ylabel='median ||x||^2/d - sigma^2',
                title='full-space adaptive ODE: off the noise shell')
    axes[3].set(xscale='log', xlabel='restart noise level sigma_s', ylabel='noise share after the full-space ODE',
                title='restarts from noised test images')
    axes[2].legend(fontsize=7)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, 'docs', 'training_length.png'), dpi=110)
    last = result['stages'][-1]
    sample_panels([w('eval', _folder(space, method, seed), f'step_{last}') for method in METHODS for space in SPACES],
                  count=36, ncol=6, gap=8, scale=2, path=os.path.join(ROOT, 'docs', 'training_length_samples.png'))


if __name__ == '__main__':
    main()
