"""Ours against the PyTorch reference on this CPU: training step and forward, side by side, alternating calls.

    bash benchmarks/setup_reference.sh          # the torch venv, with this project's requirements too
    /work/torchvenv/bin/python benchmarks/reference_speed.py [--reps 10] [--threads 2] [--skip_cifar] [--tag before]

Cases: the full-space network of configs/fashion_mnist.py (323k parameters, 32x32x1) at batch 64, and the CIFAR-10
VE NCSN++ of configs/cifar10_ve_ncsnpp.py (62.8M) at batch 8. Ours: the compiled training step of jobs/train.py
(1 and, for fashion, the config's 2 optimiser steps per call; times per optimiser step) and the jitted score;
the reference: its own train step (losses.get_step_fn with optimization_manager and models/ema.py) and its model's
forward under no_grad, torch at --threads threads, XLA on every core. Calls alternate ours / reference within each
repetition, so a slower stretch of the machine hits both. First calls (compilation, oneDNN priming) are timed
apart. Writes benchmarks/results/reference_speed.json (every timing, medians, quartiles, ratios), keyed by --tag.
Run it on a quiet machine: nothing else heavy.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import reference_training as rt  # noqa: E402
from results import save_tagged  # noqa: E402


class Ours:
    """Our compiled training step and score of a config's full-space network, on fixed random data.

    train() runs one call (n_jit optimiser steps), forward() one score evaluation of the EMA parameters; both block
    until the result is ready. `step`, `state` and `batch` are exposed for profiling (benchmarks/profile_train.py).
    """

    def __init__(self, config_module, batch: int, n_jit: int):
        import jax
        from subspace_diffusion import compiler
        from subspace_diffusion.jobs import train
        from subspace_diffusion.run import parallel, train_state
        from subspace_diffusion.run.experiment import Experiment
        from subspace_diffusion.run.settings import Settings
        config = config_module.get_config()
        config.training.batch_size, config.subspace.train_level = batch, 0
        settings = Settings.from_config(config)
        exp = Experiment.build(settings, (0,))
        tx = train_state.make_optimizer(settings.optim, exp.networks.param_keys)
        mesh = parallel.make_mesh()
        self.state = compiler.jit(lambda k: train_state.init_state(exp.networks, tx, k),
                                  out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
        self.step = train.make_train_step(exp.loss, tx, mesh, train_state.learning_rate(settings.optim),
                                          settings.training.ema_rate, 0)
        rng = np.random.default_rng(0)
        self.batch = parallel.global_batch(rng.random((n_jit, batch) + settings.data.shape, np.float32), mesh, 1)
        self._x = jax.numpy.asarray(rng.random((batch,) + settings.data.shape, np.float32))
        self._t = jax.numpy.asarray(rng.uniform(1e-5, 1., batch).astype(np.float32))
        self._score = compiler.jit(lambda p, x, t: exp.networks.score(p, 0)(x, t))
        self._block = jax.block_until_ready

    def train(self):
        self.state, m = self.step(self.state, self.batch)
        self._block(m)

    def forward(self):
        self._block(self._score(self.state.ema_params, self._x, self._t))


def _reference(checkout, make_config, batch, channels, size):
    """(train step per call, forward per call) of the reference's own model, loss, optimiser and EMA."""
    import torch
    _, state, step_fn = rt.build(checkout, 0, make_config)
    model = state['model']
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.random((batch, channels, size, size), np.float32))
    sigma = torch.from_numpy(rng.uniform(0.01, 25., batch).astype(np.float32))

    def train_call():
        model.train()
        step_fn(state, data)

    def forward_call():
        model.eval()
        with torch.no_grad():
            model(data, sigma)

    return train_call, forward_call


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _summary(times, per: int = 1):
    t = np.asarray(times) / per
    return {'median_s': float(np.median(t)), 'q25_s': float(np.percentile(t, 25)), 'q75_s': float(np.percentile(t, 75)),
            'all_s': [round(float(v), 5) for v in t]}


def speed_cases(skip_cifar: bool) -> dict:
    """{name: (our config module, batch, our steps per call, the reference's config maker, channels, size)}."""
    import torch
    from configs import cifar10_ve_ncsnpp, fashion_mnist

    def published_cifar10(config_module):  # the CIFAR-10 VE NCSN++ as published, on the CPU
        config = config_module.get_config()
        config.device, config.training.batch_size = torch.device('cpu'), 8
        return config

    cases = {'fashion_mnist, batch 64': (fashion_mnist, 64, 2, rt.reference_config, 1, 32)}
    if not skip_cifar:
        cases['cifar10 VE NCSN++, batch 8'] = (cifar10_ve_ncsnpp, 8, 1, published_cifar10, 3, 32)
    return cases


def speed_arguments(description: str, tag: str) -> argparse.Namespace:
    """The command line shared by the side-by-side benchmarks: checkout, repetitions, threads, cases, tag."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--reference', default='/work/subspace-diffusion')
    parser.add_argument('--reps', type=int, default=10)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--skip_cifar', action='store_true')
    parser.add_argument('--tag', default=tag, help='the key of this run in the JSON (before / after a change)')
    return parser.parse_args()


def side_by_side(case: tuple, checkout: str, reps: int, steps_per_call) -> dict:
    """{call: medians, quartiles (s per optimiser step) and first call}: ours' training step (at each of
    `steps_per_call`) and forward, the reference's training step and forward, alternating calls for `reps` rounds.

    case: one value of speed_cases().
    """
    ours_module, batch, _, make_config, channels, size = case
    calls = {f'ours train, {k} step(s) per call': (Ours(ours_module, batch, k).train, k) for k in steps_per_call}
    calls['ours forward'] = (Ours(ours_module, batch, 1).forward, 1)
    ref_train, ref_forward = _reference(checkout, make_config, batch, channels, size)
    calls['reference train'], calls['reference forward'] = (ref_train, 1), (ref_forward, 1)
    first = {key: _time(fn) for key, (fn, _) in calls.items()}
    times = {key: [] for key in calls}
    for r in range(reps):
        for key, (fn, _) in calls.items():
            times[key].append(_time(fn))
        done = ', '.join(f'{k} {times[k][-1]:.3f} s' for k in calls)
        print(f'  repetition {r + 1}/{reps}: {done}', flush=True)
    return {key: {**_summary(times[key], per), 'first_call_s': first[key], 'steps_per_call': per}
            for key, (_, per) in calls.items()}


def main():
    args = speed_arguments(__doc__.split('\n')[0], 'before')
    import jax
    import torch
    torch.set_num_threads(args.threads)
    cases = speed_cases(args.skip_cifar)
    out = {'command': 'python benchmarks/reference_speed.py ' + ' '.join(sys.argv[1:]), 'torch': torch.__version__,
           'jax': jax.__version__, 'torch_threads': args.threads, 'cores': os.cpu_count(), 'reps': args.reps,
           'cases': {}}
    for name, case_args in cases.items():
        print(f'{name}: building and compiling ...', flush=True)
        case = side_by_side(case_args, args.reference, args.reps, sorted({1, case_args[2]}))
        best_ours = min(case[k]['median_s'] for k in case if k.startswith('ours train'))
        case['ratios'] = {'train, ours / reference (per optimiser step, best steps per call)':
                          best_ours / case['reference train']['median_s'],
                          'forward, ours / reference': case['ours forward']['median_s'] /
                          case['reference forward']['median_s']}
        print(f'  {name}: ' + ', '.join(f'{k} {v:.2f}' for k, v in case['ratios'].items()), flush=True)
        out['cases'][name] = case
    save_tagged('reference_speed', args.tag, out)


if __name__ == '__main__':
    main()
