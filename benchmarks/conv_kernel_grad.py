"""The fashion network's 3x3 convolutions op by op: XLA:CPU's YNNPACK and Eigen against torch's oneDNN.

    /work/torchvenv/bin/python benchmarks/conv_kernel_grad.py [--threads 2] [--reps 15]

For each convolution shape of configs/fashion_mnist.py's network at batch 64: the forward, the data gradient and
the kernel gradient, each jitted alone: by jax.jit as XLA compiles them by default (YNNPACK takes the ones it
accepts), by subspace_diffusion/compiler.jit (YNNPACK left dots and reductions: the convolutions run in Eigen), and
torch's convolution and convolution_backward (oneDNN) at --threads threads. Medians in ms; writes
benchmarks/results/conv_kernel_grad.json. Run it on a quiet machine.
"""
import argparse
import os
import sys
from typing import NamedTuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from results import save_result  # noqa: E402
from timing import median_time  # noqa: E402

# (batch, size, in channels, out channels) of the network's 3x3 convolutions with the most time (profile_train.py)
SHAPES = [(64, 32, 32, 32), (64, 32, 16, 16), (64, 32, 48, 16), (64, 16, 32, 32), (64, 16, 64, 32), (64, 8, 32, 32)]


class Conv(NamedTuple):
    """One convolution: input (batch, size, size, ci) NHWC, a (k, k, ci, co) kernel, stride, symmetric padding."""
    batch: int
    size: int
    ci: int
    co: int
    k: int = 3
    stride: int = 1
    pad: int = 1

    def out_size(self) -> int:
        """The output's height (= width)."""
        return (self.size + 2 * self.pad - self.k) // self.stride + 1


def _median_ms(fn, reps):
    return 1e3 * median_time(fn, reps=reps)


def ours(conv: Conv, reps: int, backends=None) -> dict:
    """{'<case>, <backend>': ms}: XLA's forward, data gradient and kernel gradient of `conv`, each compiled alone.

    backends: {name: jit} (default: jax.jit as 'XLA default (YNNPACK)' and compiler.jit as 'compiler.jit (Eigen)').
    """
    import jax
    from subspace_diffusion import compiler
    backends = backends or {'XLA default (YNNPACK)': jax.jit, 'compiler.jit (Eigen)': compiler.jit}
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((conv.batch, conv.size, conv.size, conv.ci), np.float32))
    w = jax.numpy.asarray(rng.standard_normal((conv.k, conv.k, conv.ci, conv.co), np.float32))
    dy = jax.numpy.asarray(rng.standard_normal((conv.batch, conv.out_size(), conv.out_size(), conv.co), np.float32))
    pads, dims, strides = ((conv.pad, conv.pad),) * 2, ('NHWC', 'HWIO', 'NHWC'), (conv.stride,) * 2
    plain = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dims)  # noqa
    fns = {'forward': (plain, (x, w)),
           'data gradient': (lambda x, w, dy: jax.vjp(lambda x: plain(x, w), x)[1](dy)[0], (x, w, dy)),
           'kernel gradient': (lambda x, w, dy: jax.vjp(lambda w: plain(x, w), w)[1](dy)[0], (x, w, dy))}
    out = {}
    for name, (fn, args) in fns.items():
        for backend, jit in backends.items():
            compiled = jit(fn).lower(*args).compile()
            out[f'{name}, {backend}'] = _median_ms(lambda: compiled(*args), reps)
    return out


def reference(conv: Conv, reps: int) -> dict:
    """{'<case>, torch': ms}: torch's convolution and its convolution_backward (data, kernel), channels-first."""
    import torch
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((conv.batch, conv.ci, conv.size, conv.size), np.float32))
    w = torch.from_numpy(rng.standard_normal((conv.co, conv.ci, conv.k, conv.k), np.float32))
    dy = torch.from_numpy(rng.standard_normal((conv.batch, conv.co, conv.out_size(), conv.out_size()), np.float32))
    stride, pad = [conv.stride] * 2, [conv.pad] * 2

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, stride, pad, [1, 1], False, [0, 0], 1,
                                                           mask)

    with torch.no_grad():
        return {'forward, torch': _median_ms(lambda: torch.nn.functional.conv2d(x, w, stride=conv.stride,
                                                                                 padding=conv.pad), reps),
                'data gradient, torch': _median_ms(backward([True, False, False]), reps),
                'kernel gradient, torch': _median_ms(backward([False, True, False]), reps)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--reps', type=int, default=15)
    args = parser.parse_args()
    import jax
    import torch
    torch.set_num_threads(args.threads)
    result = {'command': 'python benchmarks/conv_kernel_grad.py ' + ' '.join(sys.argv[1:]), 'jax': jax.__version__,
              'torch': torch.__version__, 'torch_threads': args.threads, 'cores': os.cpu_count(), 'ms': {}}
    for shape in SHAPES:
        key = 'batch {}, {}x{} px, {} -> {} channels'.format(shape[0], shape[1], shape[1], *shape[2:])
        row = {**ours(Conv(*shape), args.reps), **reference(Conv(*shape), args.reps)}
        result['ms'][key] = row
        print(key + ': ' + ', '.join(f'{k} {v:.2f}' for k, v in row.items()), flush=True)
    save_result('conv_kernel_grad', result)


if __name__ == '__main__':
    main()
