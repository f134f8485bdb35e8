"""Wall time and XLA flop estimates of the CIFAR-10 NCSN++ forward / forward+backward at 32, 16, 8 px.

    python benchmarks/bench_model.py [--batch 8] [--equal_pixels]

With --equal_pixels the batch grows as (32 / res)^2, so every resolution processes the same number of
pixels per call and the ratios are per image; that keeps small resolutions from under-using the device.
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar10_ve_ncsnpp  # noqa: E402
from subspace_diffusion.run.experiment import Experiment  # noqa: E402
from subspace_diffusion.run.settings import Settings  # noqa: E402
from timing import median_time  # noqa: E402

REPEATS = 3


def _flops(lowered):
    """FLOPs from XLA's cost analysis of the lowered (pre-optimisation) HLO: the same count on every device.

    The compiled program's analysis is device-specific: on GPU, convolutions become cuDNN custom calls
    that it does not count, so it under-reports.
    """
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def main():
    """Print a markdown table of forward and forward+backward cost per image at each resolution."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8, help="batch at 32 px")
    parser.add_argument("--equal_pixels", action="store_true", help="scale the batch by (32 / res)^2")
    args = parser.parse_args()
    networks = Experiment.build(Settings.from_config(cifar10_ve_ncsnpp.get_config()), levels=(0,)).networks
    model = networks.image_model
    params = networks.init_params(jax.random.PRNGKey(0))["level_0"]

    def forward(p, x, t):
        return model.apply({"params": p}, x, t, train=False)

    def loss(p, x, t):
        return jnp.mean(forward(p, x, t) ** 2)

    rows = {}
    for r in (32, 16, 8):
        batch = args.batch * (32 // r) ** 2 if args.equal_pixels else args.batch
        x = jax.random.normal(jax.random.PRNGKey(1), (batch, r, r, 3))
        t = jnp.full((batch,), 1.0)
        fwd = jax.jit(forward).lower(params, x, t)
        bwd = jax.jit(jax.grad(loss)).lower(params, x, t)
        # Per-image figures, so that runs with different batches per resolution compare directly.
        rows[r] = [v / batch for v in (median_time(fwd.compile(), params, x, t, reps=REPEATS), _flops(fwd),
                                       median_time(bwd.compile(), params, x, t, reps=REPEATS), _flops(bwd))]

    print(f"CIFAR-10 VE NCSN++ (62.8M params), batch {args.batch} at 32 px"
          f"{' scaled by (32/res)^2' if args.equal_pixels else ''}, device {jax.devices()[0].device_kind}\n")
    print("| res | fwd ms/img | fwd GFLOP/img | fwd+bwd ms/img | fwd+bwd GFLOP/img "
          "| fwd time ratio | fwd FLOP ratio | fwd+bwd time ratio | fwd+bwd FLOP ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = rows[32]
    for r, (tf, ff, tb, fb) in rows.items():
        print(f"| {r} | {1e3 * tf:.3f} | {ff / 1e9:.2f} | {1e3 * tb:.3f} | {fb / 1e9:.2f} "
              f"| {tf / base[0]:.3f} | {ff / base[1]:.3f} | {tb / base[2]:.3f} | {fb / base[3]:.3f} |")


if __name__ == "__main__":
    main()
