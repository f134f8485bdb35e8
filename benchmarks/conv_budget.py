"""How much of the CPU gap is the convolution kernels: every convolution of the network op by op, beside the steps.

    /work/torchvenv/bin/python benchmarks/conv_budget.py [--threads 2] [--reps 10] [--skip_cifar] [--tag after]

For the fashion network (batch 64) and the CIFAR-10 VE NCSN++ (batch 8): the convolutions of our forward pass
(read from its jaxpr, with how many times each shape occurs; FIR resampling, which the reference writes
with other ops, is left in both sides' rest), each timed alone as its forward, data gradient and
kernel gradient, ours by compiler.jit (as the package compiles them, Eigen) and torch's oneDNN at --threads
threads; then the whole training step and forward of both sides in the same process, alternating calls
(reference_speed.side_by_side). A training step holds every convolution's forward and kernel
gradient, and the data gradient of all but those on the image itself (the first convolution and the input
pyramid's: their input has the data's channels and needs no gradient). What is left of a step once its
convolutions are taken out is what this project's code decides: layouts, normalisation, attention, elementwise
work, the optimiser. Writes benchmarks/results/conv_budget.json under --tag. Run it on a quiet machine.
"""
import collections
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from conv_kernel_grad import Conv, ours, reference  # noqa: E402
from reference_speed import Ours, side_by_side, speed_arguments, speed_cases  # noqa: E402
from results import save_tagged  # noqa: E402

CASES = ('forward', 'data gradient', 'kernel gradient')


def network_convs(model: Ours) -> tuple:
    """(Conv -> count, description -> count): the ordinary convolutions of `model`'s forward pass, and the others.

    The others (grouped, input-dilated or asymmetric: FIR resampling when it was written as depthwise convolutions,
    FIRConv's up-sampling convolution) have no same-op torch counterpart here: they stay in both sides' rest.
    """
    ordinary, others = collections.Counter(), collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == 'conv_general_dilated':
                x, w = (v.aval.shape for v in eqn.invars)
                (lo, hi), (lo2, hi2) = eqn.params['padding']
                stride, groups = eqn.params['window_strides'], eqn.params['feature_group_count']
                if (lo == hi == lo2 == hi2 and stride[0] == stride[1] and x[1] == x[2] and w[0] == w[1]
                        and groups == 1 and set(eqn.params['lhs_dilation']) == {1}):
                    ordinary[Conv(x[0], x[1], x[3], w[3], w[0], stride[0], lo)] += 1
                else:
                    others[f'{x} * {w}, stride {stride}, padding {eqn.params["padding"]}, '
                           f'input dilation {eqn.params["lhs_dilation"]}, groups {groups}'] += 1
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else (param,):
                    inner = getattr(sub, 'jaxpr', sub)
                    if hasattr(inner, 'eqns'):
                        walk(inner)

    walk(model._score.trace(model.state.ema_params, model._x, model._t).jaxpr.jaxpr)
    return ordinary, others


def budget(convs: collections.Counter, data_channels: int, reps: int, backend: dict) -> dict:
    """Per convolution ms (ours, torch) and the sums a forward pass and a training step hold, in ms."""
    rows, sums = [], {side: {'forward': 0.0, 'training step': 0.0} for side in ('ours', 'torch')}
    for conv, count in sorted(convs.items()):
        times = {**ours(conv, reps, backend), **reference(conv, reps)}
        row = {'conv': conv._asdict(), 'count': count, 'ms': times}
        rows.append(row)
        cases = CASES if conv.ci != data_channels else ('forward', 'kernel gradient')
        for side, suffix in (('ours', next(iter(backend))), ('torch', 'torch')):
            sums[side]['forward'] += count * times[f'forward, {suffix}']
            sums[side]['training step'] += count * sum(times[f'{c}, {suffix}'] for c in cases)
        print(f'  {count} x {tuple(conv)}: ' + ', '.join(f'{k} {v:.2f}' for k, v in times.items()), flush=True)
    return {'convolutions': rows, 'sum_ms': sums}


def main():
    args = speed_arguments(__doc__.split('\n')[0], 'after')
    import jax
    import torch
    from subspace_diffusion import compiler
    torch.set_num_threads(args.threads)
    cases = speed_cases(args.skip_cifar)
    out = {'command': 'python benchmarks/conv_budget.py ' + ' '.join(sys.argv[1:]), 'torch': torch.__version__,
           'jax': jax.__version__, 'torch_threads': args.threads, 'cores': os.cpu_count(), 'cases': {}}
    for name, case_args in cases.items():
        module, batch, n_jit, _, channels, _ = case_args
        print(f'{name}: the convolutions op by op ...', flush=True)
        ordinary, others = network_convs(Ours(module, batch, 1))
        case = budget(ordinary, channels, args.reps, {'compiler.jit (Eigen)': compiler.jit})
        case['left_in_the_rest'] = dict(others)
        print(f'{name}: the whole steps, alternating ...', flush=True)
        case['steps'] = side_by_side(case_args, args.reference, args.reps, (n_jit,))
        rest = {}
        keys = {'ours': (f'ours train, {n_jit} step(s) per call', 'ours forward'),
                'torch': ('reference train', 'reference forward')}
        for side, (train_key, forward_key) in keys.items():
            for work, key in (('training step', train_key), ('forward', forward_key)):
                whole = 1e3 * case['steps'][key]['median_s']
                rest[f'{side}, {work}'] = {'whole_ms': whole, 'convolutions_ms': case['sum_ms'][side][work],
                                           'rest_ms': whole - case['sum_ms'][side][work]}
        case['split'] = rest
        for work in ('training step', 'forward'):
            o, t = rest[f'ours, {work}'], rest[f'torch, {work}']
            print(f'  {work}: whole {o["whole_ms"]:.1f} / {t["whole_ms"]:.1f} ms, convolutions '
                  f'{o["convolutions_ms"]:.1f} / {t["convolutions_ms"]:.1f}, rest {o["rest_ms"]:.1f} / '
                  f'{t["rest_ms"]:.1f} (ours / reference)', flush=True)
        out['cases'][name] = case
    save_tagged('conv_budget', args.tag, out)


if __name__ == '__main__':
    main()
