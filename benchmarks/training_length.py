"""Does the subspace advantage survive training? Fashion-MNIST networks trained to 20,000 steps, measured on the way.

    python benchmarks/training_length.py --data_dir /usr/share/datasets/fashion-mnist   # ~5 h on 2 CPU cores

One resumable command (rerun it to continue; every finished step is skipped). For each stage s of --stages:
1. train the full-space 32 px, 16 px and 8 px networks of configs/fashion_mnist.py to step s (one run each,
   resumed from the previous stage: the data stream and randomness are functions of the step, so a staged run
   is the uninterrupted run), archived at s;
2. evaluate at s (one seed; --seeds at the last stage): full space, 1-level and 2-level chain, each with PC
   (the config's 100 steps) and DPM-Solver++ at 20 effective NFE;
3. measure why the full-space probability flow fails (benchmarks/flow_failure.py at s).
Then --mode=cutoffs on the last full-space network (are 0.629 / 0.673 still where the Fisher divergence
crosses 3e-3?).
Results: benchmarks/results/training_length.json, docs/training_length.png, docs/training_length_samples.png.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import fashion_mnist  # noqa: E402
from steps import Steps  # noqa: E402

CONFIG = os.path.join(ROOT, 'configs', 'fashion_mnist.py')
NETWORKS = {'full': 0, 'level_1': 1, 'level_2': 2}  # workdir -> the level its network serves
STEPS_PER_S = {'full': 2.9, 'level_1': 9.8, 'level_2': 22.0}  # measured on 2 cores, for the ETA only


def _trained(workdir, step):
    return os.path.isdir(os.path.join(workdir, 'checkpoints', 'archive', str(step)))


def _flags(workdir, data_dir, **extra):
    flags = [f'--config={CONFIG}', f'--workdir={workdir}', f'--config.data.data_dir={data_dir}']
    return flags + [f'--config.{k}={v}' for k, v in extra.items()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'study'))
    parser.add_argument('--data_dir', default=fashion_mnist.get_config().data.data_dir,
                        help='the folder of the Fashion-MNIST IDX files')
    parser.add_argument('--stages', type=int, nargs='+', default=[2500, 5000, 10000, 20000])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    args = parser.parse_args()
    w = lambda *p: os.path.join(args.workdir, *p)  # noqa: E731
    os.makedirs(w('logs'), exist_ok=True)
    plan, previous = {}, 0
    for s in args.stages:
        plan.update({f'train {name} to {s}': (s - previous) / rate for name, rate in STEPS_PER_S.items()})
        previous = s
    steps = Steps(plan, logs=w('logs'))
    for s in args.stages:
        for name, level in NETWORKS.items():
            steps.run(f'train {name} to {s}', _trained(w(name), s), '--mode=train',
                      *_flags(w(name), args.data_dir, **{'training.n_iters': s, 'subspace.train_level': level}))


if __name__ == '__main__':
    main()
