"""Cost of the compiled multi-level sampler against the full-space one, with the real CIFAR-10 NCSN++.

    python benchmarks/sampler_cost.py --batch 2 --steps 20       # CPU (a ratio: small batch, few steps)
    python benchmarks/sampler_cost.py --batch 64 --steps 100     # GPU

The CIFAR-10 VE NCSN++ of configs/cifar10_ve_ncsnpp.py (the reference's architecture at every level,
random weights: cost does not depend on them), the paper's sampler settings (reverse diffusion + Langevin,
2 conditional Langevin steps after each lift, Tweedie at the end), the 2-level pooling chain 32 -> 16 -> 8
with the NCSN++ cutoffs 0.516 and 0.558, and the same grid of --steps points for both samplers. Measured:
each level's network cost per call, both samplers' compile time and wall time (median of --reps), the
effective NFE, and the ideal time ratio from the measured per-level costs and the calls per level; the
profile splits each sampler's time into network calls (calls x measured cost) and the rest.
Results: benchmarks/results/sampler_cost_<backend>.json.
"""
import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar10_ve_ncsnpp  # noqa: E402
from results import save_result  # noqa: E402
from subspace_diffusion.core.diffusion import Diffusion  # noqa: E402
from subspace_diffusion.core.sampling import make_sampler  # noqa: E402
from subspace_diffusion.core.subspaces import PieceStats  # noqa: E402
from subspace_diffusion.run.experiment import Experiment  # noqa: E402
from subspace_diffusion.run.settings import Settings  # noqa: E402
from timing import median_time  # noqa: E402

CUTOFFS = (0.516, 0.558)


def measure(exp: Experiment, params, batch: int, reps: int):
    """({'full', 'subspace'}: compile s, wall s, effective NFE, calls per level, network s, other s}, ms per call).

    The samplers are the factory's, with `exp.settings.sampling`, full space against the whole chain of `exp`.
    """
    chain, settings = exp.chain, exp.settings
    # Statistics of the size CIFAR-10 has (SPEC section 2); their values do not change the cost.
    stats = PieceStats(mu=[np.zeros(chain.shapes[j - 1], np.float32) for j in range(1, chain.num_levels + 1)],
                       sigma_perp=np.array([0.0751, 0.1102][:chain.num_levels]), rms_distance=np.zeros(chain.num_levels),
                       signature=chain.signature())
    t = jnp.full((batch,), 0.5)
    per_call = []
    for k in exp.levels:
        score = jax.jit(lambda p, x, t, k=k: exp.networks.score(p, k)(x, t))
        x = jnp.ones((batch,) + chain.shapes[k])
        per_call.append(median_time(score, params, x, t, reps=reps))
        print(f'level {k} ({chain.shapes[k][0]} px): {1e3 * per_call[-1]:.1f} ms per call', flush=True)
    samplers = {
        'full': make_sampler(Diffusion(settings.sde, settings.data.shape), settings.sampling,
                             lambda p: exp.networks.scores(p)[:1]),
        'subspace': make_sampler(exp.diffusion(stats), settings.sampling, exp.networks.scores),
    }
    rows = {}
    for name, sampler in samplers.items():
        key = jax.random.PRNGKey(1)
        start = time.perf_counter()
        jax.block_until_ready(sampler.sample(params, key, batch)[0])
        compile_s = time.perf_counter() - start
        wall = median_time(lambda: sampler.sample(params, key, batch)[0], reps=reps)
        calls = sampler.cost.calls_per_level
        network = sum(n * per_call[k] for k, n in calls.items())
        rows[name] = {'compile_s': compile_s, 'wall_s': wall, 'effective_nfe': sampler.cost.effective_nfe,
                      'calls_per_level': calls, 'network_s': network, 'other_s': wall - network}
        print(f'{name}: compile {compile_s:.1f} s, sample {wall:.2f} s, NFE {sampler.cost.effective_nfe:.1f}, '
              f'calls {calls}, network {network:.2f} s, other {wall - network:.2f} s', flush=True)
    return rows, per_call


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--reps', type=int, default=3)
    args = parser.parse_args()
    config = cifar10_ve_ncsnpp.get_config()
    config.subspace.levels, config.subspace.cutoffs = 2, CUTOFFS
    config.sampling.num_steps = args.steps
    settings = Settings.from_config(config)
    exp = Experiment.build(settings, levels=(0, 1, 2))
    params = jax.jit(exp.networks.init_params)(jax.random.PRNGKey(0))
    rows, per_call = measure(exp, params, args.batch, args.reps)
    ideal = rows['subspace']['network_s'] / rows['full']['network_s']
    achieved = rows['subspace']['wall_s'] / rows['full']['wall_s']
    result = {
        'command': f'python benchmarks/sampler_cost.py --batch {args.batch} --steps {args.steps}',
        'device': f'{jax.devices()[0].device_kind} x {jax.device_count()} ({jax.default_backend()})',
        'model': 'configs/cifar10_ve_ncsnpp.py, reference architecture at every level, random weights',
        'chain': 'pooling 32 -> 16 -> 8', 'cutoffs': CUTOFFS, 'batch': args.batch, 'steps': args.steps,
        'sampler': dataclasses.asdict(settings.sampling.pc),
        'ms_per_call': {str(exp.networks.shapes[k][0]): 1e3 * c for k, c in enumerate(per_call)},
        'full': rows['full'], 'subspace': rows['subspace'],
        'effective_nfe_ratio': rows['subspace']['effective_nfe'] / rows['full']['effective_nfe'],
        'ideal_time_ratio': ideal, 'achieved_time_ratio': achieved, 'achieved_over_ideal': achieved / ideal,
    }
    save_result(f'sampler_cost_{jax.default_backend()}', result)


if __name__ == '__main__':
    main()
