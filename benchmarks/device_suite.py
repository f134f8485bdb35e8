"""One accelerator suite: training throughput, compile times, memory, and the samplers, with the CIFAR-10 NCSN++.

    python benchmarks/device_suite.py          # one GPU / TPU chip: training batch 128, sampling batch 64, 100 steps
    python benchmarks/device_suite.py --cpu    # the same measurements at CPU sizes (batch 4 / 2, 20 steps)

The network of configs/cifar10_ve_ncsnpp.py with the reference's architecture at every level (random weights:
cost does not depend on them), the 2-level pooling chain 32 -> 16 -> 8 px with the paper's cutoffs 0.516 /
0.558. Measured, in one process:
1. training step (DSM loss, Adam, EMA; one step per call) of the 32, 16 and 8 px networks in float32 and
   bfloat16: examples/s, compile time cold (empty cache) and cached (a second compile from the persistent
   cache), and the compiled program's memory analysis;
2. rematerialisation at the paper's batch 128, 32 and 16 px: what the forward pass keeps for the backward
   pass (the vjp's residuals, any backend) and, unless --no_compiled_memory, the compiled analysis;
3. samplers at the sampling batch: PC (reverse diffusion + Langevin, 2 conditional Langevin steps after each
   lift) full space vs the chain, with the ideal time ratio from the measured per-level costs; DPM-Solver++
   at 20 effective NFE, full space vs the chain.
Results: benchmarks/results/device_suite_<backend>.json, and a table on stdout.
"""
import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import cifar10_ve_ncsnpp  # noqa: E402
from results import save_result  # noqa: E402
from sampler_cost import measure  # noqa: E402
from subspace_diffusion.jobs import train  # noqa: E402
from subspace_diffusion.run import compilation, parallel, train_state  # noqa: E402
from subspace_diffusion.run.experiment import Experiment  # noqa: E402
from subspace_diffusion.run.progress import fmt_duration  # noqa: E402
from subspace_diffusion.run.settings import Settings  # noqa: E402

CUTOFFS = (0.516, 0.558)
SIZES = {'accelerator': dict(train_batch=128, sample_batch=64, steps=100, calls=20),
         'cpu': dict(train_batch=4, sample_batch=2, steps=20, calls=3)}


def _settings(level: int, batch: int, steps: int = 100, **model) -> Settings:
    config = cifar10_ve_ncsnpp.get_config()
    config.subspace.levels, config.subspace.cutoffs, config.subspace.train_level = 2, CUTOFFS, level
    config.training.batch_size, config.training.n_jitted_steps = batch, 1
    config.sampling.num_steps = steps
    for key, value in model.items():
        config.model[key] = value
    return Settings.from_config(config)


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    return {k: int(getattr(m, f'{k}_size_in_bytes')) for k in ('argument', 'output', 'temp', 'generated_code')}


def training_step(level: int, dtype: str, batch: int):
    """(jitted training step, its state, a batch of random data, settings) of the level-`level` network."""
    settings = _settings(level, batch, dtype=dtype)
    exp = Experiment.build(settings, (level,))
    tx = train_state.make_optimizer(settings.optim, exp.networks.param_keys)
    mesh = parallel.make_mesh()
    state = jax.jit(lambda k: train_state.init_state(exp.networks, tx, k), out_shardings=parallel.replicated(mesh))(
        jax.random.PRNGKey(0))
    step = train.make_train_step(exp.loss, tx, mesh, train_state.learning_rate(settings.optim),
                                 settings.training.ema_rate, settings.seed)
    local = np.random.default_rng(0).random((1, batch) + settings.data.shape, np.float32)
    return step, state, parallel.global_batch(local, mesh, leading_axes=1), settings


def training(level: int, dtype: str, batch: int, calls: int) -> dict:
    """Examples/s, compile seconds (cold, cached) and compiled memory of the level-`level` network's training step."""
    step, state, data, settings = training_step(level, dtype, batch)
    times = {}
    for kind in ('cold', 'cached'):
        jax.clear_caches()  # the second compile can only come from the persistent cache
        start = time.perf_counter()
        compiled = step.lower(state, data).compile()
        times[kind] = time.perf_counter() - start
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(calls):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / calls
    return {'level': level, 'px': settings.data.image_size // 2 ** level, 'dtype': dtype, 'batch': batch,
            'params': int(sum(x.size for x in jax.tree.leaves(state.params))),
            'examples_per_s': batch / seconds, 'step_ms': 1e3 * seconds, 'compile_cold_s': times['cold'],
            'compile_cached_s': times['cached'], 'memory_bytes': _memory(compiled)}


def remat_memory(level: int, batch: int, compiled_memory: bool) -> dict:
    """Bytes kept for the backward pass (and compiled temp bytes) of the training loss, without and with remat."""
    out = {'px': 32 // 2 ** level, 'batch': batch}
    for remat in (False, True):
        settings = _settings(level, batch, remat=remat)
        exp = Experiment.build(settings, (level,))
        params = jax.eval_shape(exp.networks.init_params, jax.random.PRNGKey(0))
        x = jax.ShapeDtypeStruct((batch,) + settings.data.shape, jnp.float32)
        loss = lambda p, x: exp.loss(p, x, jax.random.PRNGKey(1))[0]  # noqa: E731
        residuals = jax.eval_shape(lambda p, x: jax.vjp(lambda q: loss(q, x), p)[1], params, x)
        row = {'residual_bytes': int(sum(math.prod(r.shape) * r.dtype.itemsize for r in jax.tree.leaves(residuals)))}
        if compiled_memory:
            row['compiled_memory_bytes'] = _memory(jax.jit(jax.grad(loss)).lower(params, x).compile())
        out['remat' if remat else 'no_remat'] = row
    return out


def samplers(batch: int, steps: int, reps: int) -> dict:
    """PC full vs chain (ideal vs achieved), and DPM-Solver++ at 20 effective NFE, full vs chain."""
    settings = _settings(0, 8, steps)
    exp = Experiment.build(settings, (0, 1, 2))
    params = jax.jit(exp.networks.init_params)(jax.random.PRNGKey(0))
    pc, per_call = measure(exp, params, batch, reps)
    dpm_exp = dataclasses.replace(exp, settings=dataclasses.replace(settings, sampling=dataclasses.replace(
        settings.sampling, method='dpm_solver++', ode=dataclasses.replace(settings.sampling.ode, nfe_budget=20.0))))
    dpm, _ = measure(dpm_exp, params, batch, reps)
    ideal = pc['subspace']['network_s'] / pc['full']['network_s']
    achieved = pc['subspace']['wall_s'] / pc['full']['wall_s']
    return {'batch': batch, 'pc_steps': steps, 'cutoffs': CUTOFFS,
            'ms_per_call': {str(32 // 2 ** k): 1e3 * c for k, c in enumerate(per_call)},
            'pc': pc, 'pc_ideal_time_ratio': ideal, 'pc_achieved_time_ratio': achieved,
            'pc_achieved_over_ideal': achieved / ideal,
            'pc_effective_nfe_ratio': pc['subspace']['effective_nfe'] / pc['full']['effective_nfe'],
            'dpm_solver++_20': dpm, 'dpm_time_ratio': dpm['subspace']['wall_s'] / dpm['full']['wall_s']}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--cpu', action='store_true', help='CPU sizes: small batches and 20 sampler steps')
    parser.add_argument('--no_compiled_memory', action='store_true',
                        help='skip compiling the batch-128 remat programs (the residual bytes are still measured)')
    args = parser.parse_args()
    size = SIZES['cpu' if args.cpu else 'accelerator']
    compilation.enable(tempfile.mkdtemp(prefix='device_suite_cache_'))  # empty: the first compiles are cold
    t0 = time.perf_counter()
    device = f'{jax.devices()[0].device_kind} x {jax.device_count()} ({jax.default_backend()})'
    print(f'device suite on {device}, sizes {size}', flush=True)
    rows = []
    plan = [(level, dtype) for level in (0, 1, 2) for dtype in ('float32', 'bfloat16')]
    for i, (level, dtype) in enumerate(plan):
        rows.append(training(level, dtype, size['train_batch'], size['calls']))
        done = time.perf_counter() - t0
        print(f'[training {i + 1}/{len(plan)}] {rows[-1]["px"]} px {dtype}: {rows[-1]["examples_per_s"]:.1f} ex/s, '
              f'compile {rows[-1]["compile_cold_s"]:.1f} s cold / {rows[-1]["compile_cached_s"]:.1f} s cached '
              f'(elapsed {fmt_duration(done)})', flush=True)
    remat = [remat_memory(level, 128, not args.no_compiled_memory) for level in (0, 1)]
    print(f'[remat] done (elapsed {fmt_duration(time.perf_counter() - t0)})', flush=True)
    sampling = samplers(size['sample_batch'], size['steps'], reps=3)
    result = {'command': f'python benchmarks/device_suite.py{" --cpu" if args.cpu else ""}', 'device': device,
              'model': 'configs/cifar10_ve_ncsnpp.py (reference architecture per level), random weights',
              'sizes': size, 'training': rows, 'remat_at_batch_128': remat, 'sampling': sampling,
              'wall_s': time.perf_counter() - t0}
    save_result(f'device_suite_{jax.default_backend()}', result)
    _table(result)


def _table(result):
    print(f'\n## Device suite: {result["device"]}\n')
    print('| network | dtype | batch | examples/s | compile cold / cached (s) | compiled temp memory (MiB) |')
    print('| --- | --- | --- | --- | --- | --- |')
    for r in result['training']:
        print(f'| {r["px"]} px | {r["dtype"]} | {r["batch"]} | {r["examples_per_s"]:.1f} | {r["compile_cold_s"]:.1f} / '
              f'{r["compile_cached_s"]:.1f} | {r["memory_bytes"]["temp"] / 2 ** 20:.0f} |')
    print('\n| remat, batch 128 | kept for backward, no remat / remat (MiB) |\n| --- | --- |')
    for r in result['remat_at_batch_128']:
        print(f'| {r["px"]} px | {r["no_remat"]["residual_bytes"] / 2 ** 20:.0f} / '
              f'{r["remat"]["residual_bytes"] / 2 ** 20:.0f} |')
    s = result['sampling']
    print(f'\n| sampler (batch {s["batch"]}) | full space s | 2-level chain s | effective NFE full / chain | ratio |')
    print('| --- | --- | --- | --- | --- |')
    for name, key in ((f'PC {s["pc_steps"]} steps', 'pc'), ('DPM-Solver++ 20 NFE', 'dpm_solver++_20')):
        full, chain = s[key]['full'], s[key]['subspace']
        print(f'| {name} | {full["wall_s"]:.3f} | {chain["wall_s"]:.3f} | {full["effective_nfe"]:.1f} / '
              f'{chain["effective_nfe"]:.1f} | {chain["wall_s"] / full["wall_s"]:.3f} |')
    print(f'\nPC: ideal time ratio {s["pc_ideal_time_ratio"]:.3f}, achieved {s["pc_achieved_time_ratio"]:.3f} '
          f'({s["pc_achieved_over_ideal"]:.3f} of ideal); whole suite {fmt_duration(result["wall_s"])}')


if __name__ == '__main__':
    main()
