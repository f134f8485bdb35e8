"""Issue 35's control: our training and the reference's, the same full-space network and data, scored by one code.

    bash benchmarks/setup_reference.sh                                    # torch venv + reference checkout
    /work/torchvenv/bin/python benchmarks/reference_training.py --steps 10000   # the reference's run
    python main.py --mode=train --config=configs/fashion_mnist.py --workdir=runs/control/ours/full \\
        --config.training.n_iters=10000 --config.subspace.train_level=0          # ours, the same settings
    python benchmarks/reference_control.py            # resumable; stages whose networks exist are scored
    python benchmarks/reference_control.py --report   # JSON, figure and table of the finished stages
    python benchmarks/reference_control.py --bisection   # score the bisection's trained runs (BISECTION) into the JSON

At each stage s of --stages the reference's archive (runs/reference_fashion/archive/checkpoint_<s>.pth) is imported
with --mode=import into runs/control/reference/full; then each side's network at s is scored exactly as
benchmarks/training_length.py scores the study's: full space by PC (100 steps), DPM-Solver++ at 20 effective NFE
and the adaptive Dormand-Prince ODE (RK45's pair, rtol = atol = 1e-5); classifier FD, KID, pixel FD and noise
share of 256 samples (seed 0; every --seeds at the last stage); and benchmarks/flow_failure.py --full_space_only
(restarts from noised test images, the EMA DSM loss per sigma bin). Each evaluation workdir starts with the metric
classifier shipped in pretrained/fashion_mnist (trained on the same images). The report also scores the samples of
the reference's own samplers (benchmarks/reference_sampling.py, in the torch venv). Results:
benchmarks/results/reference_control.json, docs/reference_control.png, docs/reference_control_samples.png.
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
from results import RESULTS, save_result  # noqa: E402
from steps import Steps, archived, log_seconds, over_seeds, read_metrics, sample_panels, share_classifier  # noqa: E402
from tensorboard_events import scalars  # noqa: E402
from training_length import METRICS, _folder, _seeds_at, cell, noise_share  # noqa: E402
from training_length import _flags as _study_flags  # noqa: E402

SIDES = ('ours', 'reference')
METHODS = {'pc': {}, 'dpm_solver++ 20': {'sampling.method': 'dpm_solver++', 'sampling.nfe_budget': 20.0},
           'adaptive ode': {'sampling.method': 'ode'}}
FULL_SPACE = {'subspace.levels': 0, 'subspace.cutoffs': '()'}
EVAL_S = {'pc': 400, 'dpm_solver++ 20': 120, 'adaptive ode': 300}
# The bisection's 2,500-step networks (runs/<name>/full, scored into runs/<name>/eval as the control's): what of the
# reference run each takes, the rest being ours (our step, our batches, times and noise at config.seed).
BISECTION = {
    'cross': 'the reference run\'s initial weights, batches, t and z through our step (benchmarks/reference_cross.py)',
    'initA': 'the reference\'s initial weights, then our training (benchmarks/reference_init.py --init reference)',
    'wswap': 'our initial weights with the reference\'s Fourier W, then our training '
             '(benchmarks/reference_init.py --init ours_with_reference_w)',
    'wraise': 'nothing: our initial weights with the Fourier frequency under 1 in magnitude (0.14) raised to the '
              'median magnitude of the draw (10.79), then our training (benchmarks/reference_init.py --init '
              'ours_with_small_w_raised)',
}
BISECTION_STEP, BISECTION_METHODS = 2500, ('pc', 'dpm_solver++ 20')


def _flags(workdir, data_dir, **extra):
    return _study_flags(workdir, data_dir, **FULL_SPACE, **extra)


def _methods_at(stage, args) -> dict:
    """Every sampler at the last stage; the adaptive ODE's 256 samples (about 14 min on one core) only there, the
    flow diagnosis gives its noise share on 64 samples at every stage."""
    return METHODS if stage == args.stages[-1] else {m: v for m, v in METHODS.items() if m != 'adaptive ode'}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'control'))
    parser.add_argument('--reference_run', default=os.path.join(ROOT, 'runs', 'reference_fashion'),
                        help='the --workdir of benchmarks/reference_training.py')
    parser.add_argument('--data_dir', default=fashion_mnist.get_config().data.data_dir)
    parser.add_argument('--stages', type=int, nargs='+', default=[2500, 5000, 10000])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--report', action='store_true', help='run nothing: JSON, figure and table of finished stages')
    parser.add_argument('--skip_flow', action='store_true',
                        help='evaluations only, no flow_failure.py (a second training run: the spread of the metrics)')
    parser.add_argument('--bisection', action='store_true',
                        help='only score the bisection runs that are trained (runs/<name>/full at 2,500 steps) and '
                             'update the JSON\'s bisection (runs scored on an earlier machine are kept)')
    parser.add_argument('--name', default='reference_control',
                        help='the JSON and figures are benchmarks/results/<name>.json, docs/<name>*.png (another '
                             'training run of the reference, e.g. --reference_run runs/reference_fashion_seed1)')
    args = parser.parse_args()
    w = lambda *p: os.path.join(args.workdir, *p)  # noqa: E731
    os.makedirs(w('logs'), exist_ok=True)
    plan = {}
    for s in args.stages:
        plan[f'import the reference at {s}'] = 10
        for side in SIDES:
            plan.update({f'eval {side}, {m} at {s}, seed {seed}': EVAL_S[m] for m in _methods_at(s, args)
                         for seed in _seeds_at(s, args)})
            if not args.skip_flow:
                plan[f'flow {side} at {s}'] = 600
    plan.update({f'eval bisection {name}, {m}': EVAL_S[m] for name in BISECTION for m in BISECTION_METHODS})
    steps = Steps(plan, logs=w('logs'))
    if args.bisection:
        _score_bisection(steps, args)
        return
    if args.report:
        _report(w, args)
        return
    for s in args.stages:
        archive = os.path.join(args.reference_run, 'archive', f'checkpoint_{s}.pth')
        if os.path.exists(archive):
            steps.run(f'import the reference at {s}', archived(w('reference', 'full'), s), '--mode=import',
                      *_flags(w('reference', 'full'), args.data_dir), f'--import_from={archive}', '--import_level=0')
        for side in SIDES:
            if not archived(w(side, 'full'), s):
                print(f'{side}: no network at step {s} yet (train or import it, then rerun)', flush=True)
                continue
            share_classifier(w(side, 'eval'))
            for method in _methods_at(s, args):
                for seed in _seeds_at(s, args):
                    _evaluate(steps, f'eval {side}, {method} at {s}, seed {seed}', w(side), method, seed, s, args)
            if args.skip_flow:
                continue
            steps.run(f'flow {side} at {s}', os.path.exists(w(side, 'flow', f'step_{s}.json')), f'--step={s}',
                      f'--workdir={w(side)}', f'--data_dir={args.data_dir}', '--full_space_only',
                      script='benchmarks/flow_failure.py')
    _report(w, args)


def _eval_dir(run, method, seed, s) -> str:
    """The folder of one full-space evaluation of <run>/full at step s (its metrics.json and samples)."""
    return os.path.join(run, 'eval', _folder('full space', method, seed), f'step_{s}')


def _scored(w, side, method, seed, s) -> bool:
    return os.path.exists(os.path.join(_eval_dir(w(side), method, seed, s), 'metrics.json'))


def _evaluate(steps, name, run, method, seed, s, args):
    """Score the full-space network in <run>/full at step s into <run>/eval: one sampler, one sampling seed."""
    folder = _folder('full space', method, seed)
    flags = {'seed': seed, 'eval.folder': folder, 'eval.begin_ckpt': s, 'eval.end_ckpt': s,
             'eval.level_workdirs': f'("{os.path.join(run, "full")}",)', 'eval.use_subspace': False,
             **METHODS[method]}
    done = os.path.exists(os.path.join(_eval_dir(run, method, seed, s), 'metrics.json'))
    steps.run(name, done, '--mode=eval', *_flags(os.path.join(run, 'eval'), args.data_dir, **flags))


def _score_bisection(steps, args):
    """Score every trained bisection run (seed 0, BISECTION_METHODS) and merge its scores into the JSON's bisection."""
    for name in BISECTION:
        run = os.path.join(ROOT, 'runs', name)
        if not archived(os.path.join(run, 'full'), BISECTION_STEP):
            print(f'bisection {name}: no network at step {BISECTION_STEP} (see BISECTION), skipped', flush=True)
            continue
        share_classifier(os.path.join(run, 'eval'))
        for m in BISECTION_METHODS:
            _evaluate(steps, f'eval bisection {name}, {m}', run, m, 0, BISECTION_STEP, args)
    with open(os.path.join(RESULTS, f'{args.name}.json')) as f:
        result = json.load(f)
    result['bisection'] = _bisection(args)
    save_result(args.name, result)


def _finished(w, args, side, s) -> bool:
    """Reportable: PC and DPM-Solver++ scored at every seed of the stage (the adaptive ODE and the flow diagnosis,
    the slow ones, enter the report for the seeds and stages where they are done)."""
    return all(_scored(w, side, m, seed, s) for m in ('pc', 'dpm_solver++ 20') for seed in _seeds_at(s, args))


def _training_losses(w, args) -> dict:
    """{side: {'step': [...], 'loss': [...]}}: the mean training loss over each 100 steps (both 0.5 x the sum)."""
    out = {}
    ours = scalars(w('ours', 'full', 'tensorboard'), 'train/loss')
    if ours:
        steps = sorted(ours)
        out['ours'] = {'step': steps, 'loss': [float(ours[s]) for s in steps]}
    log = os.path.join(args.reference_run, 'log.jsonl')
    if os.path.exists(log):
        with open(log) as f:
            rows = [json.loads(line) for line in f]
        losses = np.array([r['loss'] for r in rows])
        ends = list(range(100, len(losses) + 1, 100))
        out['reference'] = {'step': ends, 'loss': [float(losses[e - 100:e].mean()) for e in ends],
                            'wall_s_per_step_median': float(np.median([r['wall_s'] for r in rows]))}
    return out


def _report(w, args):
    """benchmarks/results/reference_control.json, docs/reference_control*.png and the markdown table."""
    result = {'command': 'python benchmarks/reference_control.py ' + ' '.join(sys.argv[1:]),
              'config': 'configs/fashion_mnist.py (full space)',
              'stages_planned': args.stages, 'seeds': args.seeds, 'training': _training_losses(w, args), 'sides': {}}
    for side in SIDES:
        stages = [s for s in args.stages if _finished(w, args, side, s)]
        rows = []
        for s in stages:
            methods = {}
            for m in _methods_at(s, args):
                runs = [{'seed': seed, **_scores(_eval_dir(w(side), m, seed, s))}
                        for seed in _seeds_at(s, args) if _scored(w, side, m, seed, s)]
                if not runs:
                    continue
                methods[m] = {'runs': runs}
                if len(runs) > 1:
                    methods[m].update(over_seeds(f'{side}, {m} at {s}', runs, METRICS))
            flow = None
            if os.path.exists(w(side, 'flow', f'step_{s}.json')):
                with open(w(side, 'flow', f'step_{s}.json')) as f:
                    flow = json.load(f)
            rows.append({'step': s, 'methods': methods, 'flow': flow})
        result['sides'][side] = {'stages': rows, 'wall_s': sum(log_seconds(p) for p in glob.glob(w('logs', '*.log')))}
    result['reference_own_samplers'] = _own_samplers(w)
    result['bisection'] = _bisection(args)
    if not any(result['sides'][side]['stages'] for side in SIDES):
        sys.exit('no stage is scored yet: run the control first')
    save_result(args.name, result)
    _figures(w, args, result)
    print(table(result, _study(RESULTS)))


def _scores(folder) -> dict:
    """{metric: value} of one evaluation folder: its metrics.json and the noise share of its samples."""
    metrics = {**read_metrics(os.path.join(folder, 'metrics.json')), 'noise_share': noise_share(folder)}
    return {k: metrics[k] for k in METRICS}


def _bisection(args) -> dict:
    """{variant: what it takes from the reference, and its 2,500-step scores by sampler} of the runs scored here, and
    of those the committed JSON holds from an earlier machine (runs/ gone)."""
    path = os.path.join(RESULTS, f'{args.name}.json')
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            out = json.load(f).get('bisection', {})
    for name, what in BISECTION.items():
        scores = {}
        for m in BISECTION_METHODS:
            folder = _eval_dir(os.path.join(ROOT, 'runs', name), m, 0, BISECTION_STEP)
            if os.path.exists(os.path.join(folder, 'metrics.json')):
                scores[m] = _scores(folder)
        if scores:
            out[name] = {'takes from the reference': what, 'step': BISECTION_STEP, 'seed': 0, 'scores': scores}
    return out


def _own_samplers(w) -> list:
    """Noise share of the samples the reference's own samplers drew (benchmarks/reference_sampling.py)."""
    rows = []
    for about in sorted(glob.glob(w('reference', 'own_samplers', 'step_*', '*', 'about.json'))):
        with open(about) as f:
            row = json.load(f)
        row['noise_share'] = noise_share(os.path.dirname(about))
        rows.append(row)
    return rows


def _study(result_dir) -> dict:
    """{(step, method): {'noise_share', 'classifier_fd'}} of the full-space variants of our training before issue 35
    (benchmarks/results/training_length.json, seed 0), for the table's third column."""
    with open(os.path.join(result_dir, 'training_length.json')) as f:
        study = json.load(f)
    return {(st['step'], v['method']): st['runs'][0] for v in study['variants'] if v['space'] == 'full space'
            for st in v['stages']}


def table(result, study=None) -> str:
    """Markdown: per stage and sampler, noise share and classifier FD of ours beside the reference's (and of our
    training before issue 35, seed 0, where `study` has the stage); the flow's 64-sample adaptive ODE: noise only."""
    sides = [*SIDES, 'before']
    head = ['step', 'sampler'] + [f'noise share, {s}' for s in sides] + [f'classifier FD, {s}' for s in sides]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    by = {side: {r['step']: r for r in result['sides'][side]['stages']} for side in SIDES}
    study = study or {}
    for s in result['stages_planned']:
        for m in [*METHODS, 'adaptive ode, 64 (flow)']:
            cells = {key: [] for key in ('noise_share', 'classifier_fd')}
            for side in SIDES:
                row = by[side].get(s)
                if m.endswith('(flow)'):
                    flow = row and row['flow']
                    share = flow and flow['trajectories']['full space, adaptive ode']['noise_share']
                    cells['noise_share'].append('-' if not flow else f'{share:.2f}')
                    cells['classifier_fd'].append('-')
                    continue
                for key, digits in (('noise_share', 2), ('classifier_fd', 2)):
                    cells[key].append(cell(row['methods'][m], key, digits) if row and m in row['methods'] else '-')
            old = study.get((s, m))
            for key in cells:
                cells[key].append(f'{old[key]:.2f}' if old else '-')
            if all(c == '-' for c in cells['noise_share'][:2]):
                continue
            lines.append(f'| {s} | {m} | ' + ' | '.join(cells['noise_share'] + cells['classifier_fd']) + ' |')
    return '\n'.join(lines)


def _figures(w, args, result):
    """docs/reference_control.png: training loss, DSM loss by sigma, noise share by stage, restarts; and samples."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    colours = {'ours': 'C0', 'reference': 'C3'}
    for side, curve in result['training'].items():
        axes[0].plot(curve['step'], curve['loss'], color=colours[side], lw=0.8, label=side)
    axes[0].set(yscale='log', xlabel='training step', ylabel='training loss (0.5 x sum, mean of 100 steps)')
    theirs = {r['step']: r['flow']['ema_dsm_loss_by_sigma'] for r in result['sides']['reference']['stages']
              if r['flow']}
    for row in result['sides']['ours']['stages']:
        if row['step'] in theirs and row['flow']:
            ours, ref = row['flow']['ema_dsm_loss_by_sigma'], theirs[row['step']]
            axes[1].plot(ours['sigma'], np.divide(ours['loss'], ref['loss']), marker='o', label=f'step {row["step"]}')
    axes[1].axhline(1.0, color='k', lw=0.5)
    for side in SIDES:
        stages = result['sides'][side]['stages']
        xs = [r['step'] for r in stages]
        for m, ls in (('pc', '-'), ('dpm_solver++ 20', '--')):
            ys = [np.mean([x['noise_share'] for x in r['methods'][m]['runs']]) for r in stages]
            axes[2].plot(xs, ys, color=colours[side], ls=ls, marker='o', label=f'{side}, {m}')
        flows = [(r['step'], r['flow']) for r in stages if r['flow']]
        ys = [f['trajectories']['full space, adaptive ode']['noise_share'] for _, f in flows]
        axes[2].plot([x for x, _ in flows], ys, color=colours[side], ls=':', marker='o',
                     label=f'{side}, adaptive ode (64)')
        if flows:  # the latest stage with a flow diagnosis
            step, flow = flows[-1]
            axes[3].plot([r['sigma'] for r in flow['restarts']], [r['noise_share'] for r in flow['restarts']],
                         color=colours[side], marker='o', label=f'{side}, step {step}')
    axes[1].set(xscale='log', xlabel='sigma', ylabel='EMA DSM loss on the test images, ours / reference',
                title='where in noise level the networks differ')
    axes[2].set(xscale='log', xlabel='training step', ylabel='noise share of the samples', ylim=(-0.03, 1.03))
    axes[3].set(xscale='log', xlabel='restart noise level sigma_s', ylabel='noise share after the full-space ODE',
                ylim=(-0.03, 1.03), title='restarts from noised test images')
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, 'docs', f'{args.name}.png'), dpi=110)
    # The latest stage both sides reached, so the panels compare the same training length.
    common = set.intersection(*({r['step'] for r in result['sides'][side]['stages']} for side in SIDES))
    last = {side: next(r for r in result['sides'][side]['stages'] if r['step'] == max(common)) for side in SIDES}
    sample_panels([_eval_dir(w(side), m, args.seeds[0], row['step'])
                   for m in METHODS for side, row in last.items() if m in row['methods']], count=36, ncol=6, gap=8,
                  scale=2,
                  path=os.path.join(ROOT, 'docs', f'{args.name}_samples.png'))


if __name__ == '__main__':
    main()
