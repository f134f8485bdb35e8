"""Write a full-size checkpoint in the score_sde_pytorch release layout, for benchmarks/bench_import.py.

Needs torch (not a project dependency; e.g. `python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch numpy`):
    /tmp/tv/bin/python benchmarks/make_release_checkpoint.py --out /tmp/checkpoint_26.pth

Shapes and key order come from tests/data/reference/manifest.json (the reference's own state_dict of the
chosen published config); values are random. Like a released checkpoint it holds 'model' (DataParallel
state_dict with the sigmas buffer and the Fourier W), 'ema' (decay, num_updates, shadow_params over the
trainable parameters), 'optimizer' (an Adam state for every trainable parameter, lr a numpy.float64) and
'step'. A sidecar JSON records a few EMA values so the benchmark can check what it imported.
"""
import argparse
import collections
import json
import os

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', default='ve/cifar10_ncsnpp_continuous')
    parser.add_argument('--image_size', type=int, default=32)
    parser.add_argument('--out', required=True)
    parser.add_argument('--step', type=int, default=1_300_001)
    parser.add_argument('--sigma_max', type=float, default=50.0)
    args = parser.parse_args()
    with open(os.path.join(ROOT, 'tests', 'data', 'reference', 'manifest.json')) as f:
        entry = next(e for e in json.load(f)['entries']
                     if e['config'] == args.config and e['image_size'] == args.image_size)
    gen = torch.Generator().manual_seed(0)
    model = collections.OrderedDict(
        (key, torch.randn(shape, generator=gen) * 0.05) for key, shape in entry['state_dict'])
    # The reference's sigmas buffer: num_scales geometric noise levels from sigma_max down to sigma_min.
    model['module.sigmas'] = torch.exp(torch.linspace(np.log(args.sigma_max), np.log(0.01), 1000))
    frozen = set(entry['buffers']) | set(entry['non_trainable_params'])
    trainable = [k for k in model if k not in frozen]
    shadow = [model[k] + 0.01 * torch.randn(model[k].shape, generator=gen) for k in trainable]
    assert [list(s.shape) for s in shadow] == entry['ema_shadow_shapes']
    params = [k for k in model if k not in entry['buffers']]  # parameters(), the Fourier W included
    state = {params.index(k): {'step': torch.tensor(float(args.step)), 'exp_avg': torch.zeros_like(model[k]),
                               'exp_avg_sq': torch.full_like(model[k], 1e-6)} for k in trainable}
    groups = [{'lr': np.float64(2e-4), 'betas': (0.9, 0.999), 'eps': 1e-8, 'weight_decay': 0, 'amsgrad': False,
               'params': list(range(len(params)))}]
    checkpoint = {'optimizer': {'state': state, 'param_groups': groups}, 'model': model,
                  'ema': {'decay': 0.999, 'num_updates': args.step, 'shadow_params': shadow}, 'step': args.step}
    torch.save(checkpoint, args.out)
    probe = {k[len('module.'):]: shadow[trainable.index(k)].flatten()[:4].tolist() for k in trainable[::50]}
    with open(args.out + '.json', 'w') as f:
        json.dump({'config': args.config, 'image_size': args.image_size, 'n_params': entry['n_params'],
                   'step': args.step, 'bytes': os.path.getsize(args.out), 'ema_probe': probe}, f, indent=1)
    print(f'wrote {args.out}: {os.path.getsize(args.out) / 2 ** 20:.0f} MiB, {entry["n_params"]:,} parameters')


if __name__ == '__main__':
    main()
