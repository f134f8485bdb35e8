"""Is the 2x gap robust? The study's networks trained three times, and full space at lower learning rates.

    python benchmarks/training_runs.py --data_dir /usr/share/datasets/fashion-mnist   # about 10 h on 2 CPU cores

One resumable command (rerun it to continue; every finished step is skipped), in the order that decides the
headline first:
1. the learning rate of full space: its network of configs/fashion_mnist.py at the study's lr 1e-3 (training
   seed 42's network of step 2, scored first in full space), then at lr 2e-4 and 5e-4 (training seed 42;
   --long_warmup LR adds LR with 5,000 warm-up steps), trained to --step and scored as training_length.py scores
   a stage (PC 100 and DPM-Solver++ at 20 NFE, sampling seeds --seeds: classifier FD and KID, pixel FD, noise
   share of 256 samples), with benchmarks/flow_failure.py's restarts by noise level;
2. training runs: the full-space, 16 px and 8 px networks at training seeds 42 (the study's), 1 and 2 (each
   draws its own Fourier features), to --step, scored in full space, the 1-level and the 2-level chain, with the
   same restarts for full space; training seed 42's archives at 2,500 and 5,000 steps are also scored as the
   study scores those stages (sampling seed 0, every space and method, the flow diagnosis with the chains): issue
   35's rerun of the study's stages trained before its EMA fix.
A network trained elsewhere with the same flags is the same run (the data order and every key follow the step):
copy benchmarks/reference_control.py's runs/control/ours/full into <workdir>/seed_42/full and it is reused.
A run the committed JSON already holds (scored at the same --step and --seeds, on a machine whose runs/ is gone) is
carried into the report instead of trained again; scored here again, it replaces its entry.
Results: benchmarks/results/training_runs.json (every value per run, sampling seed and variant), the table of
docs/results.md and docs/training_runs.png (--report writes them from what is finished).
"""
import argparse
import json
import os
import sys
from typing import NamedTuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from configs import fashion_mnist  # noqa: E402
from results import save_result  # noqa: E402
from steps import Steps, log_seconds, over_seeds, share_classifier  # noqa: E402
from training_length import (EVAL_S, FLOW_S, METHODS, METRICS, NETWORKS, SPACES, STEPS_PER_S,  # noqa: E402
                             evaluate, evaluated, scores, train)

TRAINING_SEEDS = (42, 1, 2)  # 42: configs/fashion_mnist.py's seed, the training-length study's run
LEARNING_RATES = (2e-4, 5e-4)  # the study's is 1e-3; the reference's default 2e-4
LONG_WARMUP = 5000
EARLY_STAGES = (2500, 5000)  # the study's stages trained with the defective EMA (issue 35), rescored on seed 42
FULL = {'full space': 0}
STUDY_RATE = 'lr 0.001'  # the label of the study's rate among the learning rates
RESULT = os.path.join(ROOT, 'benchmarks', 'results', 'training_runs.json')


class Run(NamedTuple):
    """One trained set of networks: its folder under --workdir, the label of its steps, what it trains and scores."""
    folder: str
    label: str  # 'lr 0.0002', 'training seed 1'
    networks: tuple  # names of training_length.NETWORKS
    spaces: dict  # the spaces it is scored in (training_length.SPACES or full space alone)
    flags: dict  # config flags of its training (its evaluation reads the networks, not these)


def _runs(args) -> list:
    """Every run, in the order they train: full space by learning rate, then the training seeds."""
    runs = [Run(f'lr_{lr:g}', f'lr {lr:g}', ('full',), FULL, {'optim.lr': lr}) for lr in LEARNING_RATES]
    if args.long_warmup:
        lr = args.long_warmup
        runs.append(Run(f'lr_{lr:g}_warmup_{LONG_WARMUP}', f'lr {lr:g}, warm-up {LONG_WARMUP}', ('full',), FULL,
                        {'optim.lr': lr, 'optim.warmup': LONG_WARMUP}))
    return runs + [Run(f'seed_{t}', f'training seed {t}', tuple(NETWORKS), SPACES, {'seed': t})
                   for t in TRAINING_SEEDS]


def _dir(root, run):
    """The path joiner of one run's folder (training_length's `w`)."""
    return lambda *p: root(run.folder, *p)


def _plan(runs, args) -> dict:
    """Planned seconds of every step, for the ETA."""
    plan = {}
    for run in runs:
        plan.update({f'train {run.label}: {name} to {args.step}': args.step / STEPS_PER_S[name]
                     for name in run.networks})
        plan.update({f'eval {run.label}: {space}, {m} at {args.step}, seed {seed}': EVAL_S[m]
                     for space in run.spaces for m in METHODS for seed in args.seeds})
        plan[f'flow {run.label}: at {args.step}'] = FLOW_S
        if run.flags.get('seed') == TRAINING_SEEDS[0]:
            for s in EARLY_STAGES:
                plan.update({f'eval {run.label}: {space}, {m} at {s}, seed {args.seeds[0]}': EVAL_S[m]
                             for space in run.spaces for m in METHODS})
                plan[f'flow {run.label}: at {s}'] = FLOW_S
    return plan


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'training_runs'))
    parser.add_argument('--data_dir', default=fashion_mnist.get_config().data.data_dir,
                        help='the folder of the Fashion-MNIST IDX files')
    parser.add_argument('--step', type=int, default=10000, help='train every network to this step and score it')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='sampling seeds of every score')
    parser.add_argument('--long_warmup', type=float, default=None,
                        help=f'also train full space at this learning rate with {LONG_WARMUP} warm-up steps')
    parser.add_argument('--report', action='store_true', help='run nothing: write the JSON and figure of what is done')
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error('--seeds: give at least two sampling seeds (every score is a mean and a spread over them)')
    root = lambda *p: os.path.join(args.workdir, *p)  # noqa: E731
    os.makedirs(root('logs'), exist_ok=True)
    runs = _runs(args)
    steps = Steps(_plan(runs, args), logs=root('logs'))
    if args.report:
        _report(root, runs, args, steps)
        return
    s, before = args.step, _committed(args)
    for run in [_study_rate(runs)] + runs:  # the study's rate first: the learning rates are compared against it
        w, label = _dir(root, run), f'{run.label}: '
        if _carried(run, before) and not _scored(w, run.spaces, args):
            print(f'{run.label}: scored before in {RESULT} (an earlier machine\'s runs/), skipped', flush=True)
            continue
        train(steps, w, args.data_dir, s, run.networks, label, **run.flags)
        share_classifier(w('eval'))
        evaluate(steps, w, args.data_dir, s, args.seeds, run.spaces, label)  # flags: training's alone
        steps.run(f'flow {label}at {s}', os.path.exists(w('flow', f'step_{s}.json')), f'--step={s}',
                  f'--workdir={w()}', f'--data_dir={args.data_dir}', '--full_space_only',
                  script='benchmarks/flow_failure.py')
        if run.flags.get('seed') == TRAINING_SEEDS[0] and run.networks == tuple(NETWORKS):
            for early in EARLY_STAGES:
                evaluate(steps, w, args.data_dir, early, args.seeds[:1], run.spaces, label)
                steps.run(f'flow {label}at {early}', os.path.exists(w('flow', f'step_{early}.json')),
                          f'--step={early}', f'--workdir={w()}', f'--data_dir={args.data_dir}',
                          script='benchmarks/flow_failure.py')
    _report(root, runs, args, steps)


def _committed(args) -> dict:
    """The committed result's entries when it was scored at this --step and these --seeds (else empty): a run
    scored on an earlier machine, whose runs/ is gone, is carried into the report instead of trained again."""
    if not os.path.exists(RESULT):
        return {}
    with open(RESULT) as f:
        result = json.load(f)
    if result['step'] != args.step or result['sampling_seeds'] != args.seeds:
        return {}
    return {'training_runs': result['training_runs'], 'learning_rates': result['learning_rates'],
            'early_stages_training_seed_42': result['early_stages_training_seed_42']}


def _carried(run, before) -> bool:
    """Whether everything `run` produces is in the committed result (`before`, from _committed)."""
    rates, seeds = before.get('learning_rates', {}), before.get('training_runs', {})
    if 'seed' not in run.flags:  # a learning rate
        return run.label in rates
    if run.networks != tuple(NETWORKS):  # the study's rate: training seed 42's full space alone
        return STUDY_RATE in rates
    early = run.flags['seed'] != TRAINING_SEEDS[0] or \
        all(str(s) in before.get('early_stages_training_seed_42', {}) for s in EARLY_STAGES)
    return str(run.flags['seed']) in seeds and early


def _study_rate(runs) -> Run:
    """The study's learning rate: training seed 42's full-space network, scored in full space (its steps are that
    run's, so the training-seed phase skips them)."""
    return _seed_run(runs, TRAINING_SEEDS[0])._replace(networks=('full',), spaces=FULL)


def _seed_run(runs, seed) -> Run:
    """The run of training seed `seed`."""
    return next(run for run in runs if run.flags.get('seed') == seed)


def _scored(w, spaces, args) -> bool:
    return all(evaluated(w, space, m, seed, args.step) for space in spaces for m in METHODS for seed in args.seeds)


def _flow_summary(w, s):
    """Restarts by noise level, the adaptive ODE's noise share and the EMA DSM loss of a finished flow diagnosis
    (None if not run yet)."""
    path = w('flow', f'step_{s}.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return _summarise(json.load(f))


def _summarise(flow) -> dict:
    """The summary _flow_summary keeps of a flow diagnosis (benchmarks/flow_failure.py's JSON)."""
    return {'restarts': [{k: r[k] for k in ('sigma', 'noise_share')} for r in flow['restarts']],
            'ode_noise_share': flow['trajectories']['full space, adaptive ode']['noise_share'],
            'ema_dsm_loss': flow['ema_dsm_loss']['0'], 'samples': flow['samples']}


def _variant_scores(w, run, args) -> dict:
    """{'space, method': {'runs': [per sampling seed], 'mean', 'std'}} of one run's networks."""
    out = {}
    for space in run.spaces:
        for m in METHODS:
            rows = [scores(w, space, m, seed, args.step) for seed in args.seeds]
            out[f'{space}, {m}'] = {'runs': rows, **over_seeds(f'{run.label}: {space}, {m}', rows, METRICS)}
    return out


def _report(root, runs, args, steps):
    """Write benchmarks/results/training_runs.json and docs/training_runs.png from every finished run."""
    s = args.step
    before = _committed(args)  # what an earlier machine scored: kept unless scored here again
    seeds, rates = dict(before.get('training_runs', {})), dict(before.get('learning_rates', {}))
    for run in runs:
        w = _dir(root, run)
        if not _scored(w, run.spaces, args):
            continue
        entry = {'variants': _variant_scores(w, run, args), 'flow': _flow_summary(w, s),
                 'wall_s': _wall(steps, f'{run.label}: ')}
        if 'seed' in run.flags:
            seeds[str(run.flags['seed'])] = entry
        else:
            rates[run.label] = {**entry, 'flags': run.flags, 'training seed': 42}
    study = _study_rate(runs)
    w = _dir(root, study)
    if _scored(w, study.spaces, args):  # the study's rate: training seed 42's full-space network
        rates[STUDY_RATE] = {'variants': _variant_scores(w, study, args), 'flow': _flow_summary(w, s),
                             'training seed': 42}
    order = [STUDY_RATE] + [run.label for run in runs if 'seed' not in run.flags]  # then any an earlier call ran
    rates = {label: rates[label] for label in order + sorted(set(rates) - set(order)) if label in rates}
    seeds = {str(t): seeds[str(t)] for t in TRAINING_SEEDS if str(t) in seeds}
    early = {**before.get('early_stages_training_seed_42', {}),
             **_early_scores(_dir(root, _seed_run(runs, TRAINING_SEEDS[0])), args)}
    if not seeds and not rates:
        sys.exit('nothing is scored yet: run the benchmark first')
    flag = f' --long_warmup {args.long_warmup:g}' if args.long_warmup else ''
    result = {'command': f'python benchmarks/training_runs.py --data_dir <the Fashion-MNIST IDX folder>{flag}',
              'config': 'configs/fashion_mnist.py', 'step': s, 'sampling_seeds': args.seeds,
              'training_seeds_planned': list(TRAINING_SEEDS), 'training_runs': seeds,
              'over_training_runs': _over_runs(seeds), 'gaps': _gaps(seeds), 'learning_rates': rates,
              'early_stages_training_seed_42': early,
              'notes': 'per training run: mean and std (ddof=1) over the sampling seeds; over_training_runs: mean and '
                       'std (ddof=1) of the per-run means; 256 samples against the 10,000 test images'}
    save_result('training_runs', result)
    _figure(result)
    print(table(result))
    if early:
        with open(os.path.join(ROOT, 'benchmarks', 'results', 'training_length.json')) as f:
            print('\n' + early_table(result, json.load(f)))


def _early_scores(w, args) -> dict:
    """Training seed 42's networks at EARLY_STAGES, as the study scores a stage (sampling seed args.seeds[0]):
    {stage: {'variants': {'space, method': scores}, 'flow': the flow summary}} of every finished stage."""
    out, seed = {}, args.seeds[0]
    for s in EARLY_STAGES:
        if all(evaluated(w, space, m, seed, s) for space in SPACES for m in METHODS):
            out[str(s)] = {'variants': {f'{space}, {m}': scores(w, space, m, seed, s) for space in SPACES
                                        for m in METHODS}, 'flow': _flow_summary(w, s)}
    return out


def _wall(steps, label) -> float:
    """Wall seconds of every logged step of one run (its label: 'lr 0.0002: ', 'training seed 1: ')."""
    logs = [steps.log_path(name) for name in steps.plan if label in name]
    return sum(log_seconds(p) for p in logs if os.path.exists(p))


def _over_runs(runs) -> dict:
    """Per variant: mean and std over the training runs of each run's mean over sampling seeds."""
    if len(runs) < 2:
        return {}
    variants = next(iter(runs.values()))['variants']
    return {v: over_seeds(f'{v} over training runs', [r['variants'][v]['mean'] for r in runs.values()], METRICS)
            for v in variants}


def _gaps(runs) -> dict:
    """Full space against each chain under each method, in classifier FD: the ratio per training run, and the
    difference of the means over runs against the combined spread of both variants (per variant: the spread of the
    runs' means and the mean spread of the sampling seeds within a run, added in quadrature)."""
    if len(runs) < 2:
        return {}
    fd = 'classifier_fd'

    def spread(rows):
        means, within = [r['mean'][fd] for r in rows], [r['std'][fd] for r in rows]
        return float(np.sqrt(np.var(means, ddof=1) + np.mean(np.square(within))))

    out = {}
    for m in METHODS:
        full = [r['variants'][f'full space, {m}'] for r in runs.values()]
        for chain in [space for space in SPACES if space != 'full space']:
            other = [r['variants'][f'{chain}, {m}'] for r in runs.values()]
            difference = float(np.mean([r['mean'][fd] for r in full]) - np.mean([r['mean'][fd] for r in other]))
            combined = float(np.hypot(spread(full), spread(other)))
            out[f'full space against the {chain}, {m}'] = {
                'ratio_per_run': [a['mean'][fd] / b['mean'][fd] for a, b in zip(full, other)],
                'difference': difference, 'combined_spread': combined, 'beyond_the_spread': abs(difference) > combined}
    return out


def table(result) -> str:
    """The markdown table of docs/results.md: classifier FD and noise share per variant, per training run and over
    the runs; then full space by learning rate."""
    runs = result['training_runs']
    fmt = lambda v, k, d: f"{v['mean'][k]:.{d}f} ± {v['std'][k]:.{d}f}"  # noqa: E731
    head = ['variant'] + [f'seed {t}: classifier FD' for t in runs] + ['over runs: classifier FD', 'noise share']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for v, over in result['over_training_runs'].items():
        lines.append('| ' + ' | '.join([v] + [fmt(r['variants'][v], 'classifier_fd', 2) for r in runs.values()] +
                                       [fmt(over, 'classifier_fd', 2), fmt(over, 'noise_share', 3)]) + ' |')
    if result['gaps']:
        lines += ['', '| classifier FD | ratio per training run | difference of the means | combined spread | |',
                  '| --- | --- | --- | --- | --- |']
        for name, g in result['gaps'].items():
            ratios = ' / '.join(f'{x:.2f}' for x in g['ratio_per_run'])
            lines.append(f"| {name} | {ratios} | {g['difference']:.2f} | {g['combined_spread']:.2f} | "
                         f"{'beyond' if g['beyond_the_spread'] else 'within'} the spread |")
    lines += ['', '| full space at | method | classifier FD | noise share | restarts from sigma 2 / 8 / 16: noise |',
              '| --- | --- | --- | --- | --- |']
    for rate, r in result['learning_rates'].items():
        flow = r['flow']
        restarts = _restarts_cell(flow) if flow else 'not run'
        for v, sc in r['variants'].items():
            lines.append(f"| {rate} | {v.split(', ', 1)[1]} | {fmt(sc, 'classifier_fd', 2)} | "
                         f"{fmt(sc, 'noise_share', 3)} | {restarts} |")
    return '\n'.join(lines)


def early_table(result, study) -> str:
    """The markdown table of issue 35's rerun: the study's stages at EARLY_STAGES (`study`: training_length.json,
    trained with the constant-rate EMA) beside training seed 42's networks at those steps (the corrected EMA):
    classifier FD and noise share at sampling seed 0, then full space's flow (adaptive ODE, restarts)."""
    early = result['early_stages_training_seed_42']
    stages = [s for s in EARLY_STAGES if str(s) in early]
    head = ['variant'] + [f'{s:,} steps: {who}' for s in stages for who in ('the study (constant-rate EMA)', 'rerun')]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    cell = lambda r: f"{r['classifier_fd']:.2f} / {r['noise_share']:.2f}"  # noqa: E731
    for v in study['variants']:
        before = {st['step']: next(r for r in st['runs'] if r['seed'] == 0) for st in v['stages']}
        lines.append('| ' + ' | '.join([v['variant']] + [cell(x) for s in stages for x in
                                                         (before[s], early[str(s)]['variants'][v['variant']])]) + ' |')
    flows = [f for s in stages for f in (_summarise(study['flow'][str(s)]), early[str(s)]['flow'])]
    lines.append('| full space, adaptive ODE: noise share | ' +
                 ' | '.join(f"{f['ode_noise_share']:.2f}" for f in flows) + ' |')
    lines.append('| full space, restarts from sigma 2 / 8 / 16: noise share | ' +
                 ' | '.join(map(_restarts_cell, flows)) + ' |')
    return '\n'.join(lines)


def _restarts_cell(flow) -> str:
    """'a / b / c': the noise share after restarts from sigma 2, 8 and 16 of a flow summary."""
    return ' / '.join(f"{x['noise_share']:.2f}" for x in flow['restarts'] if x['sigma'] in (2, 8, 16))


def _figure(result):
    """docs/training_runs.png: classifier FD per variant, each training run's sampling spread beside the spread over
    runs; full space's FD by learning rate; and its restarts by noise level at each learning rate."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.2))
    runs = result['training_runs']
    for i, (t, r) in enumerate(runs.items()):
        names = list(r['variants'])
        xs = np.arange(len(names)) + 0.15 * (i - (len(runs) - 1) / 2)
        axes[0].errorbar(xs, [r['variants'][v]['mean']['classifier_fd'] for v in names],
                         yerr=[r['variants'][v]['std']['classifier_fd'] for v in names], fmt='o', capsize=3,
                         label=f'training seed {t} (sampling spread)')
    if result['over_training_runs']:
        names = list(result['over_training_runs'])
        over = result['over_training_runs']
        axes[0].errorbar(np.arange(len(names)) + 0.4, [over[v]['mean']['classifier_fd'] for v in names],
                         yerr=[over[v]['std']['classifier_fd'] for v in names], fmt='ks', capsize=4,
                         label='over training runs')
    if runs:  # until a training run is scored, the panel stays empty
        names = list(next(iter(runs.values()))['variants'])
        axes[0].set_xticks(range(len(names)), [n.replace(', ', '\n') for n in names], fontsize=7)
        axes[0].legend(fontsize=7)
    axes[0].set(yscale='log', ylabel='classifier Frechet distance', title=f'at {result["step"]} training steps')
    rates = result['learning_rates']
    for m, style in (('pc', 'o-'), ('dpm_solver++ 20', 's--')):
        for warm, label in ((False, f'full space, {m}'), (True, f'full space, {m}, warm-up {LONG_WARMUP}')):
            pts = sorted((float(k.split()[1].rstrip(',')), r['variants'][f'full space, {m}'])
                         for k, r in rates.items() if ('warm-up' in k) == warm)
            if pts:  # the long warm-up: open markers at its rate, off the line of the default warm-up
                shift = 1.05 if warm else 1.0  # beside the default warm-up's marker at the same rate
                axes[1].errorbar([p[0] * shift for p in pts], [p[1]['mean']['classifier_fd'] for p in pts],
                                 yerr=[p[1]['std']['classifier_fd'] for p in pts], capsize=3, label=label,
                                 fmt=style[0] if warm else style, mfc='none' if warm else None)
    axes[1].set(xscale='log', yscale='log', xlabel='learning rate', ylabel='classifier Frechet distance',
                title='full space by learning rate (training seed 42)')
    axes[1].legend(fontsize=7)
    for rate, r in rates.items():
        if r['flow']:
            restarts = r['flow']['restarts']
            axes[2].plot([x['sigma'] for x in restarts], [x['noise_share'] for x in restarts], marker='o', label=rate)
    axes[2].set(xscale='log', xlabel='restart noise level sigma_s', ylabel='noise share after the full-space ODE',
                title='restarts from noised test images, by learning rate')
    if any(r['flow'] for r in rates.values()):
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, 'docs', 'training_runs.png'), dpi=110)


if __name__ == '__main__':
    main()
