"""Wall time and XLA flop estimates of the CIFAR-10 NCSN++ forward / forward+backward at 32, 16, 8 px."""
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar10_ve_ncsnpp  # noqa: E402
from subspace_diffusion.models.score import create_model, init_params  # noqa: E402

BATCH = 8
REPEATS = 3


def _flops(compiled):
    """Total flops from an XLA cost analysis (dict or list of dicts, depending on jax version)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def _time(fn, *args):
    """Median wall seconds of REPEATS calls of an already compiled fn."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    """Print a markdown table of forward and forward+backward cost per resolution."""
    config = cifar10_ve_ncsnpp.get_config()
    model = create_model(config)
    params = init_params(model, jax.random.PRNGKey(0), config)["params"]

    def forward(p, x, t):
        return model.apply({"params": p}, x, t, train=False)

    def loss(p, x, t):
        return jnp.mean(forward(p, x, t) ** 2)

    rows = {}
    for r in (32, 16, 8):
        x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, r, r, 3))
        t = jnp.full((BATCH,), 1.0)
        fwd = jax.jit(forward).lower(params, x, t).compile()
        bwd = jax.jit(jax.grad(loss)).lower(params, x, t).compile()
        rows[r] = (_time(fwd, params, x, t), _flops(fwd), _time(bwd, params, x, t), _flops(bwd))

    print(f"CIFAR-10 VE NCSN++ (62.8M params), batch {BATCH}, device {jax.devices()[0].platform}\n")
    print("| res | fwd s | fwd GFLOP | fwd+bwd s | fwd+bwd GFLOP | fwd time / 32px | fwd+bwd time / 32px |")
    print("|---|---|---|---|---|---|---|")
    for r, (tf, ff, tb, fb) in rows.items():
        print(f"| {r} | {tf:.3f} | {ff / 1e9:.1f} | {tb:.3f} | {fb / 1e9:.1f} "
              f"| {tf / rows[32][0]:.3f} | {tb / rows[32][2]:.3f} |")


if __name__ == "__main__":
    main()
