"""Does the backend's compiled memory analysis show rematerialisation? A 16-block MLP with and without jax.checkpoint.

    python benchmarks/remat_xla_cpu.py          # seconds

16 blocks of 4 tanh layers (512 wide) on a batch of 4,096, gradient of a sum of squares. Measured for each: the
bytes the vjp keeps for the backward pass (its residuals, independent of the backend) and the compiled program's
temp bytes (`compile().memory_analysis()`, the backend's own scheduling). Where the second does not fall with the
first, the backend does not exploit remat, and its analysis cannot show the saving of `model.remat`.
Results: benchmarks/results/remat_<backend>.json.
"""
import math
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import save_result  # noqa: E402

BLOCKS, LAYERS, WIDTH, BATCH = 16, 4, 512, 4096


def _block(w, x):
    for _ in range(LAYERS):
        x = jnp.tanh(x @ w)
    return x


def _loss(ws, x, remat: bool):
    block = jax.checkpoint(_block) if remat else _block
    for w in ws:
        x = block(w, x)
    return (x ** 2).sum()


def main():
    ws = [jnp.full((WIDTH, WIDTH), 0.01)] * BLOCKS
    x = jnp.ones((BATCH, WIDTH))
    rows = {}
    for remat in (False, True):
        loss = lambda ws, x: _loss(ws, x, remat)  # noqa: E731
        residuals = jax.eval_shape(lambda ws: jax.vjp(lambda v: loss(v, x), ws)[1], ws)
        compiled = jax.jit(jax.grad(loss)).lower(ws, x).compile()
        rows['remat' if remat else 'no_remat'] = {
            'residual_mib': sum(math.prod(r.shape) * r.dtype.itemsize for r in jax.tree.leaves(residuals)) / 2 ** 20,
            'compiled_temp_mib': compiled.memory_analysis().temp_size_in_bytes / 2 ** 20}
    save_result(f'remat_{jax.default_backend()}', {
        'command': 'python benchmarks/remat_xla_cpu.py', 'device': f'{jax.devices()[0].device_kind} ({jax.default_backend()})',
        'model': f'{BLOCKS} blocks x {LAYERS} tanh layers, width {WIDTH}, batch {BATCH}', **rows})


if __name__ == '__main__':
    main()
