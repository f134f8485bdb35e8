"""The reference's own samplers on its own weights (issue 35, item 3): no code of ours between network and samples.

    /work/torchvenv/bin/python benchmarks/reference_sampling.py \
        --archive runs/reference_fashion/archive/checkpoint_10000.pth

The archive's EMA weights in the reference's NCSN++ (`models.ema` copy_to), then its `sampling.get_sampling_fn`:
PC (reverse-diffusion predictor, Langevin corrector, snr 0.16, one corrector step, noise removal) with the
reference's N = 1000 steps and with our config's 100, and its probability-flow ODE sampler (scipy RK45,
rtol = atol = 1e-5, noise removal), each on --samples prior draws (torch seed --seed) down to eps = 1e-5 (the
reference's VE sampling eps). Each writes <out>/<sampler>/samples_0.npz (uint8 NHWC, as our evaluations store
them) and <out>/<sampler>/about.json (NFE, seconds); benchmarks/reference_control.py scores their noise share.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_training as rt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLERS = {'pc 1000': ('pc', 1000), 'pc 100': ('pc', 100), 'ode rk45': ('ode', 1000)}
EPS = 1e-5


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--archive', required=True, help='a checkpoint written by benchmarks/reference_training.py')
    parser.add_argument('--reference', default='/work/subspace-diffusion')
    parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'control', 'reference', 'own_samplers'))
    parser.add_argument('--samples', type=int, default=64)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    config, state, _ = rt.build(args.reference, args.seed)
    rt.restore(state, args.archive)
    state['ema'].copy_to(state['model'].parameters())
    model = state['model'].eval()
    import sampling
    import sde_lib
    m = config.model
    step = state['step']
    for name, (method, n) in SAMPLERS.items():
        folder = os.path.join(args.out, f'step_{step}', name.replace(' ', '_'))
        if os.path.exists(os.path.join(folder, 'about.json')):
            print(f'{name}: done before, skipped', flush=True)
            continue
        config.sampling.method = method
        sde = sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=n)
        fn = sampling.get_sampling_fn(config, sde, (args.samples, 1, 32, 32), lambda x: x, EPS)
        torch.manual_seed(args.seed)
        t0 = time.time()
        x, extra = fn(model)
        seconds = time.time() - t0
        nfe = int(extra) if method == 'ode' else 2 * n  # PC: one corrector and one predictor call per step
        pixels = np.round(np.clip(x.permute(0, 2, 3, 1).numpy(), 0., 1.) * 255).astype(np.uint8)
        os.makedirs(folder, exist_ok=True)
        np.savez(os.path.join(folder, 'samples_0.npz'), samples=pixels)
        with open(os.path.join(folder, 'about.json'), 'w') as f:
            json.dump({'sampler': name, 'archive': os.path.relpath(args.archive, ROOT), 'step': step,
                       'samples': args.samples, 'seed': args.seed, 'nfe_per_sample': nfe, 'seconds': seconds,
                       'torch_threads': args.threads}, f, indent=2)
        print(f'{name}: {args.samples} samples, NFE {nfe}, {seconds:.0f} s', flush=True)


if __name__ == '__main__':
    main()
