"""Where the compile time of the CIFAR-10 NCSN++ training step goes, cold and from the persistent cache.

    python benchmarks/compile_split.py          # ~2 min on 2 CPU cores

The 32 px float32 training step of benchmarks/device_suite.py (batch 4), lowered and compiled twice in one
process with an empty persistent cache: once cold, once after jax.clear_caches() so the executable can only come
from the cache. Measured: tracing + lowering (Python, which no cache saves) and XLA's compile separately, with
JAX's own cache metrics (the compile time the hit saved, the time spent retrieving the executable).
Results: benchmarks/results/compile_split_<backend>.json.
"""
import os
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from device_suite import training_step  # noqa: E402
from results import save_result  # noqa: E402
from subspace_diffusion.run import compilation  # noqa: E402


def main():
    compilation.enable(tempfile.mkdtemp(prefix='compile_split_cache_'))
    events = {}
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: events.__setitem__(event.rsplit('/', 1)[-1], seconds)
        if event.startswith('/jax/compilation_cache/') else None)
    step, state, data, _ = training_step(0, 'float32', 4)
    rows = {}
    for kind in ('cold', 'cached'):
        jax.clear_caches()
        events.clear()
        start = time.perf_counter()
        lowered = step.lower(state, data)
        lowered_at = time.perf_counter()
        lowered.compile()
        rows[kind] = {'trace_and_lower_s': lowered_at - start, 'compile_s': time.perf_counter() - lowered_at,
                      'cache_events_s': dict(events)}
        print(kind, rows[kind], flush=True)
    save_result(f'compile_split_{jax.default_backend()}', {
        'command': 'python benchmarks/compile_split.py', 'device': f'{jax.devices()[0].device_kind} ({jax.default_backend()})',
        'program': 'CIFAR-10 VE NCSN++ training step, 32 px, float32, batch 4 (benchmarks/device_suite.py)', **rows})


if __name__ == '__main__':
    main()
