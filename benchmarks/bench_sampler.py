"""Subspace vs full-space sampler wall time, next to the ideal ratio from measured per-level costs; scan vs loop.

    python benchmarks/bench_sampler.py [--steps 100 --batch 16 --size 32 --width 64]

The score function is a cheap 3-layer convolutional net with fixed random weights: its cost scales with
the number of pixels, like a real score network, and it needs no training.
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from subspace_diffusion.core.diffusion import Diffusion  # noqa: E402
from subspace_diffusion.core.pc import Langevin, PCConfig, langevin_step, predictor_step, split_grid  # noqa: E402
from subspace_diffusion.core.sampling import SamplerConfig, sample  # noqa: E402
from subspace_diffusion.core.sde import SDE  # noqa: E402
from subspace_diffusion.core.subspaces import PieceStats, PoolingChain, Subspace  # noqa: E402
from timing import median_time  # noqa: E402


def conv_score(width, channels, key):
    """A resolution-agnostic conv net score(x (B,H,W,C), t (B,)) with fixed random weights."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (3, 3, channels, width)) / np.sqrt(9 * channels)
    w2 = jax.random.normal(k2, (3, 3, width, width)) / np.sqrt(9 * width)
    w3 = jax.random.normal(k3, (3, 3, width, channels)) / np.sqrt(9 * width)
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

    def score(x, t):
        h = jax.nn.silu(conv(x, w1) + t[:, None, None, None])
        h = jax.nn.silu(conv(h, w2))
        return conv(h, w3) - x

    return score


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--steps', type=int, default=100)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--width', type=int, default=64)
    parser.add_argument('--cutoffs', type=float, nargs=2, default=(0.5, 0.56))
    args = parser.parse_args()

    sde = SDE('ve')
    chain = PoolingChain((args.size, args.size, 3), 2)
    stats = PieceStats(mu=[np.zeros(s, np.float32) for s in chain.shapes[:2]], sigma_perp=np.array([0.1, 0.15]),
                       rms_distance=np.zeros(2), signature=chain.signature())
    score = conv_score(args.width, 3, jax.random.PRNGKey(0))
    fns = [score] * 3
    cfg = SamplerConfig('pc', eps=sde.sampling_eps, pc=PCConfig(num_steps=args.steps))
    key = jax.random.PRNGKey(1)

    per_level = []
    for k in range(3):
        x = jnp.ones((args.batch,) + chain.shapes[k])
        per_level.append(median_time(jax.jit(score), x, jnp.ones(args.batch)))
    _, spans = split_grid(args.steps, sde.sampling_eps, 1.0, args.cutoffs)
    calls = {k: 2 * (b - a) for k, (a, b) in spans.items()}  # predictor + 1 corrector per grid point
    ideal = sum(calls[k] * per_level[k] for k in calls) / (sum(calls.values()) * per_level[0])

    full = jax.jit(lambda key: sample(key, args.batch, Diffusion(sde, chain.shapes[0]), [score], cfg)[0])
    subspace = Diffusion(sde, chain.shapes[0], Subspace(chain, stats, args.cutoffs))
    sub = jax.jit(lambda key: sample(key, args.batch, subspace, fns, cfg)[0])
    t_full, t_sub = median_time(full, key, reps=3), median_time(sub, key, reps=3)

    grid = np.linspace(1.0, sde.sampling_eps, args.steps)

    @jax.jit
    def one_step(x, key, t, s):
        kc, kp = jax.random.split(key)
        x = langevin_step(score, x, t, kc, Langevin(cfg.pc.snr, 1, 1.0))
        return predictor_step(cfg.pc.predictor, sde, score, x, t, s, kp)[0]

    def loop(key):
        x = sde.prior_sample(key, (args.batch,) + chain.shapes[0])
        for i, k in enumerate(jax.random.split(key, args.steps - 1)):
            x = one_step(x, k, grid[i], grid[i + 1])
        return x

    t_loop = median_time(loop, key, reps=3)

    print(f'## Sampler benchmark ({jax.devices()[0].device_kind}, batch {args.batch}, {args.size}px, '
          f'{args.steps} steps, width {args.width}, cutoffs {tuple(args.cutoffs)})\n')
    print('| quantity | value |\n| --- | --- |')
    for k, t in enumerate(per_level):
        print(f'| score eval at {chain.shapes[k][0]}px (ms) | {1e3 * t:.2f} (x{t / per_level[0]:.3f} of full) |')
    print(f'| full-space sampler, compiled scan (s) | {t_full:.3f} |')
    print(f'| subspace sampler, compiled scan (s) | {t_sub:.3f} |')
    print(f'| achieved time ratio sub/full | {t_sub / t_full:.3f} |')
    print(f'| ideal ratio from per-level costs | {ideal:.3f} |')
    print(f'| achieved / ideal | {t_sub / t_full / ideal:.3f} |')
    print(f'| full-space sampler, Python loop of jitted steps (s) | {t_loop:.3f} |')
    print(f'| loop / scan | {t_loop / t_full:.3f} |')


if __name__ == '__main__':
    main()
