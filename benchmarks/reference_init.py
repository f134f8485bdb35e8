"""Issue 35's bisection: a workdir whose step-0 checkpoint holds chosen initial weights, for main.py to train from.

    /work/torchvenv/bin/python benchmarks/reference_init.py --workdir runs/initA/full --init reference
    /work/torchvenv/bin/python benchmarks/reference_init.py --workdir runs/wswap/full --init ours_with_reference_w
    python benchmarks/reference_init.py --workdir runs/wraise/full --init ours_with_small_w_raised   # no torch
    python main.py --mode=train --config=configs/fashion_mnist.py --workdir=<workdir> \\
        --config.subspace.levels=0 --config.subspace.cutoffs="()" --config.training.n_iters=2500

--init reference: the reference's own initial NCSN++ of benchmarks/reference_training.py --seed (torch's draw);
ours: the network our training draws at config.seed (jobs/train.py's init key); ours_with_reference_w: ours with
the frozen Fourier-feature frequencies W (all_modules.0.W, never trained) taken from the reference's draw;
ours_with_small_w_raised: ours with every frequency under SMALL_W in magnitude (seed 42's 0.14) moved to the median
magnitude of its N(0, fourier_scale^2) draw, sign kept: the one change that tests whether the near-zero frequency
is what costs our seed-42 network its PC quality (docs/results.md, the PC gap). The training that follows is
ours: our batches, times and noise at config.seed, so against our own run at that seed only the initial weights
differ.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_training as rt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
INITS = ('reference', 'ours', 'ours_with_reference_w', 'ours_with_small_w_raised')
SMALL_W = 1.0  # below every frequency of the reference's two draws (smallest 1.60, 1.92), above ours (0.14, 0.18)
MEDIAN_ABS_NORMAL = 0.6745  # the median of |N(0, 1)|


def full_space():
    """(settings, experiment, the importer's layout of its network) of configs/fashion_mnist.py's full-space
    network, as the control trains it."""
    from configs import fashion_mnist
    from subspace_diffusion.run import published
    from subspace_diffusion.run.experiment import Experiment
    from subspace_diffusion.run.settings import Settings
    config = fashion_mnist.get_config()
    config.subspace.levels, config.subspace.cutoffs = 0, ()
    settings = Settings.from_config(config)
    exp = Experiment.build(settings, (0,))
    return settings, exp, published.network_layout(exp.networks, 0)


def as_ours(state_dict, layout) -> dict:
    """A reference state_dict ({key: tensor}) as our level-0 parameter tree, by the importer's layout."""
    from subspace_diffusion.models import convert
    from subspace_diffusion.run import published
    arrays = {k: v.detach().numpy().copy() for k, v in state_dict.items()}
    return published.to_params(convert.strip_prefix(arrays), layout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--init', choices=INITS, required=True)
    parser.add_argument('--reference', default='/work/subspace-diffusion')
    parser.add_argument('--seed', type=int, default=0, help='the reference run\'s --seed (its torch draw)')
    args = parser.parse_args()
    import jax
    from subspace_diffusion.jobs.import_checkpoint import _write
    from subspace_diffusion.run.train_state import init_key
    settings, exp, layout = full_space()
    if args.init in ('reference', 'ours_with_reference_w'):
        _, ref, _ = rt.build(args.reference, args.seed)
        theirs = as_ours(ref['model'].state_dict(), layout)
    if args.init == 'reference':
        params = theirs
    else:
        params = jax.tree.map(np.asarray, exp.networks.init_params(init_key(settings.seed))['level_0'])
        if args.init == 'ours_with_reference_w':
            params['all_modules_0']['W'] = theirs['all_modules_0']['W']
        elif args.init == 'ours_with_small_w_raised':
            w = params['all_modules_0']['W']
            typical = MEDIAN_ABS_NORMAL * settings.network.fourier_scale
            params['all_modules_0']['W'] = np.where(np.abs(w) < SMALL_W, np.where(w < 0, -typical, typical), w)
    print('Fourier W:', np.round(params['all_modules_0']['W'], 2))
    _write(settings, args.workdir, 0, (params, params),
           {'file': f'benchmarks/reference_init.py --init {args.init} --seed {args.seed}', 'step': 0, 'weights': 'ema'})


if __name__ == '__main__':
    main()
