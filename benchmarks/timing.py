"""The benchmarks' timer: median wall time of an already compiled call."""
import time

import jax
import numpy as np


def median_time(fn, *args, reps=5):
    """Median wall seconds of `reps` calls of fn(*args), after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))
