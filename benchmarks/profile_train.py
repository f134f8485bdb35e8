"""Where a training step spends its time, ours and the reference's, by op class (issue 36).

    bash benchmarks/setup_reference.sh                 # the torch venv, with this project's requirements too
    /work/torchvenv/bin/python benchmarks/profile_train.py [--steps 10] [--threads 2] [--tag before]

The full-space network of configs/fashion_mnist.py at batch 64, one optimiser step per call. Ours: a jax.profiler
trace of the compiled step; XLA:CPU records one event per executed op (thunk), which the compiled HLO names with
the JAX operation it came from (its op_name metadata: module path, forward or transposed for the backward pass).
The reference: torch.profiler over its own train step, every operator's self time, the backward pass told apart by
autograd's parent events, the clip and the EMA update recorded as their own ranges. Both are sorted into the same
classes (convolution forward / backward, GroupNorm, attention and other matmuls, resampling, elementwise, loss,
optimiser / clip / EMA / norms, layout copies). Op times on several threads can overlap, so each side's classes
are also given as shares of its own total. Writes benchmarks/results/profile_train.json under --tag.
Run it on a quiet machine: nothing else heavy.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from unittest import mock

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import reference_training as rt  # noqa: E402
from reference_speed import Ours  # noqa: E402
from results import save_tagged  # noqa: E402

CLASSES = ('convolution forward', 'convolution backward', 'GroupNorm forward', 'GroupNorm backward',
           'attention and matmuls forward', 'attention and matmuls backward', 'resampling', 'elementwise forward',
           'elementwise backward', 'loss', 'optimiser, clip, EMA and norms', 'layout copies', 'other')


def ours_class(op_name: str, instruction: str, attention: set, batch: int = 64) -> str:
    """The class of one executed XLA op from its HLO op_name metadata (and its instruction text when it has none).

    attention: the module names (all_modules_<i>) of the attention blocks. Outside the network, ops on
    batch-shaped arrays are the loss; the rest are the optimiser, clip, EMA and norms.
    """
    if 'NCSNpp' not in op_name:
        if not op_name:
            return 'layout copies' if re.search(r'transpose|copy|bitcast', instruction) else 'other'
        return 'loss' if f'[{batch},' in instruction else 'optimiser, clip, EMA and norms'
    direction = 'backward' if 'transpose(' in op_name else 'forward'
    primitive = op_name.rsplit('/', 1)[-1]
    if 'conv_general_dilated' in primitive:
        return f'convolution {direction}'
    if '/GroupNorm_' in op_name:
        return f'GroupNorm {direction}'
    module = re.search(r'all_modules_\d+(?=/)', op_name)
    if 'dot_general' in primitive or (module and module.group(0) in attention):
        return f'attention and matmuls {direction}'
    if 'reduce-window' in instruction or primitive.startswith(('reduce_window', 'repeat')):
        return 'resampling'
    return f'elementwise {direction}'


def profile_ours(steps: int) -> dict:
    """{class: ms per optimiser step} of our compiled step (XLA thunk events of a jax.profiler trace)."""
    import jax
    from configs import fashion_mnist
    ours = Ours(fashion_mnist, 64, 1)
    params = ours.state.params['level_0']
    attention = {k for k, v in params.items() if isinstance(v, dict) and 'NIN_3' in v}  # NIN_3: attention's output
    hlo = ours.step.lower(ours.state, ours.batch).compile().as_text()
    entry = hlo[hlo.index('ENTRY'):]
    bodies = {m.group(1): m.group(2) for m in re.finditer(r'\n%([\w.\-]+) \([^\n]*\{\n(.*?)\n\}', hlo, re.S)}
    names = {}
    for line in entry.split('\n'):
        m = re.match(r'\s+(?:ROOT )?%?([\w.\-]+) = ', line)
        if m:
            on = re.search(r'op_name="([^"]*)"', line)
            called = re.search(r'calls=%([\w.\-]+)', line)
            body = bodies.get(called.group(1), '') if called else ''
            if not on and re.search(r'ROOT \S+ = \S+ convolution\(', body):
                # XLA writes the kernel gradient as a convolution over the batch, with no op_name metadata
                names[m.group(1)] = 'convolution backward'
            else:
                names[m.group(1)] = ours_class(on.group(1) if on else '', line, attention)
    for _ in range(3):
        ours.train()
    trace_dir = tempfile.mkdtemp(prefix='profile_ours_')
    t0 = time.perf_counter()
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
        ours.train()
    jax.profiler.stop_trace()
    wall = time.perf_counter() - t0
    path = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)[0]
    with gzip.open(path) as f:
        events = json.load(f)['traceEvents']
    by_class, by_op, unmatched, count = collections.Counter(), collections.Counter(), 0, 0
    for e in events:
        if e.get('ph') != 'X':
            continue
        name = e['name']
        if name in names:
            by_class[names[name]] += e['dur'] / 1e3
            by_op[f'{names[name]}: {re.sub(r"[.][0-9]+$", "", name)}'] += e['dur'] / 1e3
            count += 1
        elif name.split('.')[0] in ('conv_general_dilated', 'convolution') or name.endswith('fusion'):
            unmatched += 1
    return {'ms_per_step': {k: by_class[k] / steps for k in CLASSES}, 'ops_per_step': count / steps,
            'top_ops_ms_per_step': {k: v / steps for k, v in by_op.most_common(25)},
            'hlo_ops': len(names), 'unmatched_events': unmatched, 'wall_ms_per_step (profiled)': 1e3 * wall / steps}


def _reference_class(name: str, scope: str, backward: bool) -> str:
    n = name.lower()
    direction = 'backward' if backward else 'forward'
    if scope:
        return 'optimiser, clip, EMA and norms'
    if 'convolution' in n or 'conv2d' in n:
        return 'convolution backward' if 'backward' in n or backward else 'convolution forward'
    if 'group_norm' in n:
        return f'GroupNorm {direction}'
    if re.search(r'bmm|einsum|softmax|addmm|aten::mm|matmul|linear', n):
        return f'attention and matmuls {direction}'
    if re.search(r'upsample|pool|repeat_interleave|avg', n):
        return 'resampling'
    if re.search(r'copy_|contiguous|permute|transpose|clone|_to_copy|as_strided|view|reshape|empty', n):
        return 'layout copies'
    return f'elementwise {direction}'


def profile_reference(checkout: str, steps: int) -> dict:
    """{class: ms per optimiser step} of the reference's own train step (torch.profiler, operators' self time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    _, state, step_fn = rt.build(checkout, 0)
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.random((64, 1, 32, 32), np.float32))
    ema_update, clip = state['ema'].update, torch.nn.utils.clip_grad_norm_

    def ema_ranged(*a, **k):
        with record_function('ema update'):
            return ema_update(*a, **k)

    def clip_ranged(*a, **k):
        with record_function('clip'):
            return clip(*a, **k)

    state['ema'].update = ema_ranged
    for _ in range(3):
        step_fn(state, batch)
    with mock.patch.object(torch.nn.utils, 'clip_grad_norm_', clip_ranged):
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step_fn(state, batch)
        wall = time.perf_counter() - t0
    by_class, by_op = collections.Counter(), collections.Counter()
    for e in prof.events():  # self time: a parent's excludes its children's, so nothing is counted twice
        scope, backward, parent = '', False, e.cpu_parent
        while parent is not None:
            if parent.name in ('ema update', 'clip') or parent.name.startswith('Optimizer.step'):
                scope = parent.name
            if parent.name.startswith('autograd::engine'):
                backward = True
            parent = parent.cpu_parent
        if e.name.startswith(('ProfilerStep', 'Optimizer', 'autograd::engine')):
            continue
        c = _reference_class(e.name, scope, backward)
        by_class[c] += e.self_cpu_time_total / 1e3
        by_op[f'{c}: {e.name}'] += e.self_cpu_time_total / 1e3
    return {'ms_per_step': {k: by_class[k] / steps for k in CLASSES}, 'wall_ms_per_step (profiled)':
            1e3 * wall / steps, 'top_ops_ms_per_step': {k: v / steps for k, v in by_op.most_common(25)}}


def table(result) -> str:
    """Markdown table: ms per step and share of each side's total, by class."""
    sides = [s for s in ('ours', 'reference') if s in result]
    totals = {s: sum(result[s]['ms_per_step'].values()) for s in sides}
    rows = ['| op class | ' + ' | '.join(f'{s} ms (share)' for s in sides) + ' |',
            '| --- |' + ' --- |' * len(sides)]
    for c in CLASSES:
        cells = [f"{result[s]['ms_per_step'][c]:.1f} ({result[s]['ms_per_step'][c] / totals[s]:.0%})" for s in sides]
        rows.append(f'| {c} | ' + ' | '.join(cells) + ' |')
    rows.append('| sum of op times | ' + ' | '.join(f'{totals[s]:.1f}' for s in sides) + ' |')
    rows.append('| wall per step (profiled) | ' + ' | '.join(
        f"{result[s]['wall_ms_per_step (profiled)']:.1f}" for s in sides) + ' |')
    return '\n'.join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--reference', default='/work/subspace-diffusion')
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--tag', default='before')
    parser.add_argument('--sides', default='ours,reference')
    args = parser.parse_args()
    result = {'command': 'python benchmarks/profile_train.py ' + ' '.join(sys.argv[1:]), 'cores': os.cpu_count()}
    sides = args.sides.split(',')
    if 'reference' in sides:
        import torch
        torch.set_num_threads(args.threads)
        result['torch'] = torch.__version__
        print('profiling the reference ...', flush=True)
        result['reference'] = profile_reference(args.reference, args.steps)
    if 'ours' in sides:
        import jax
        result['jax'] = jax.__version__
        print('profiling ours ...', flush=True)
        result['ours'] = profile_ours(args.steps)
    print(table(result))
    save_tagged('profile_train', args.tag, result)


if __name__ == '__main__':
    main()
