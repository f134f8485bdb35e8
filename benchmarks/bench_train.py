"""Training throughput (examples/s per device) and the speed-up of n_jitted_steps > 1.

    python benchmarks/bench_train.py [--cifar_batch 128] [--calls 10] [--n_jitted 5]

Rows: the quick digits config (16 px), the CIFAR-10 VE NCSN++ full-space model (32 px) and its
level-1 subspace model (16 px), each timed with 1 and with --n_jitted optimiser steps per compiled
call, on random data in model space (throughput does not depend on pixel values).
"""
import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar10_ve_ncsnpp, quick_digits  # noqa: E402
from subspace_diffusion.jobs import train  # noqa: E402
from subspace_diffusion.run import parallel, train_state  # noqa: E402
from subspace_diffusion.run.experiment import Experiment  # noqa: E402
from subspace_diffusion.run.settings import Settings  # noqa: E402


def examples_per_sec(settings, n_jit, calls):
    """(examples/s per device, compile+first-call seconds) of the training step of `settings`."""
    exp = Experiment.build(settings, settings.subspace.train_levels())
    tx = train_state.make_optimizer(settings.optim, exp.networks.param_keys)
    mesh = parallel.make_mesh()
    state = jax.jit(lambda k: train_state.init_state(exp.networks, tx, k), out_shardings=parallel.replicated(mesh))(
        jax.random.PRNGKey(0))
    step = train.make_train_step(exp.loss, tx, mesh, train_state.learning_rate(settings.optim),
                                 settings.training.ema_rate, 0)
    b = settings.training.batch_size
    local = np.random.default_rng(0).random((n_jit, b) + settings.data.shape, np.float32)
    batch = parallel.global_batch(local, mesh, leading_axes=1)
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(calls):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    return calls * n_jit * b / (time.perf_counter() - t0) / jax.device_count(), compile_s


def _settings(module, batch, level=0):
    config = module.get_config()
    config.training.batch_size = batch
    config.subspace.train_level = level
    return Settings.from_config(config)


def main():
    """Print a markdown table of examples/s per device with 1 and n_jitted steps per call."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cifar_batch', type=int, default=128)
    parser.add_argument('--calls', type=int, default=10)
    parser.add_argument('--n_jitted', type=int, default=5)
    parser.add_argument('--skip_cifar', action='store_true')
    args = parser.parse_args()
    rows = [('quick digits (nf 16)', 16, _settings(quick_digits, 64))]
    if not args.skip_cifar:
        rows += [('CIFAR-10 VE NCSN++ full', 32, _settings(cifar10_ve_ncsnpp, args.cifar_batch)),
                 ('CIFAR-10 VE NCSN++ level 1', 16, _settings(cifar10_ve_ncsnpp, args.cifar_batch, level=1))]
    print(f'device {jax.devices()[0].device_kind} x {jax.device_count()}, backend {jax.default_backend()}, '
          f'{args.calls} timed calls after one compile call\n', flush=True)
    print(f'| model | px | batch | ex/s/device, 1 step/call | ex/s/device, {args.n_jitted} steps/call | '
          f'speed-up | compile s (1 / {args.n_jitted}) |\n|---|---|---|---|---|---|---|', flush=True)
    for name, px, settings in rows:
        one, c1 = examples_per_sec(settings, 1, args.calls * args.n_jitted)
        many, cn = examples_per_sec(settings, args.n_jitted, args.calls)
        print(f'| {name} | {px} | {settings.training.batch_size} | {one:.1f} | {many:.1f} | {many / one:.3f} '
              f'| {c1:.0f} / {cn:.0f} |', flush=True)


if __name__ == '__main__':
    main()
