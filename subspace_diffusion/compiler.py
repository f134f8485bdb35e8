"""`jit`: jax.jit with the XLA:CPU option that runs convolutions in Eigen rather than YNNPACK.

Why: XLA:CPU (jaxlib 0.10) hands every convolution with more than 16 features to YNNPACK, which on this
project's 2-core machine does not gain from the second thread: Eigen runs the fashion network's kernel gradients
1.8-2.9x faster, its data gradients and forwards up to 1.8x faster (its 8x8-pixel forward 1.7x slower), and the
whole training step in 14% less time (benchmarks/conv_kernel_grad.py, benchmarks/reference_speed.py). XLA
chooses per compilation which operations YNNPACK may take (`xla_cpu_experimental_ynn_fusion_type`, default:
individual convolutions, individual dots, reductions); we leave it dots and reductions. The option is experimental,
so it is tried once on a trivial program: a jaxlib that does not know it, or a default backend that is not a CPU,
compiles with XLA's own defaults. XLA_FLAGS would say the same for every program, but an unknown flag there aborts
the process at start-up, where a refused compile option is an exception we can catch.
"""
import functools

import jax
import jax.numpy as jnp

OPTION = 'xla_cpu_experimental_ynn_fusion_type'
VALUE = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


@functools.cache
def options() -> dict:
    """The compiler options every program of this package compiles with: {OPTION: VALUE} on a CPU whose jaxlib
    accepts it, {} elsewhere."""
    if jax.default_backend() != 'cpu':
        return {}
    chosen = {OPTION: VALUE}
    try:
        jax.jit(jnp.sin, compiler_options=chosen).lower(jnp.zeros(1)).compile()
    except jax.errors.JaxRuntimeError:
        return {}
    return chosen


def jit(fn=None, **kwargs):
    """jax.jit(fn, **kwargs) compiled with `options()`; usable as a decorator with or without arguments."""
    if fn is None:
        return functools.partial(jit, **kwargs)
    return jax.jit(fn, compiler_options=options(), **kwargs)
