"""Seeded weights in pytorch-fid's FID Inception layout, from numpy alone (test helper).

The tests regenerate them to load into the project's network; benchmarks/make_torch_fixtures.py, run with
torch, loads the same values into pytorch-fid's own network to write the expected outputs. The layout (keys,
shapes, dtypes in state_dict order) is pytorch-fid's, recorded by that script in
tests/data/torch/fid_inception_manifest.json, with the SHA-256 of the weights it used.
"""
import hashlib
import math

import numpy as np

SEED = 20151205


def weights(entries) -> dict:
    """{key: array} for [(key, shape, dtype)]: He-scaled convolutions, BatchNorm with non-trivial statistics.

    Scales are chosen so that activations neither vanish nor explode through the 94 conv layers, and running
    means / variances far from 0 / 1 so that the BatchNorm folding is exercised.
    """
    rng = np.random.default_rng(SEED)
    out = {}
    for key, shape, dtype in entries:
        leaf = key.rsplit('.', 1)[-1]
        fan_in = math.prod(shape[1:])
        if leaf == 'num_batches_tracked':
            value = rng.integers(1, 10 ** 6)
        elif key.endswith('conv.weight'):
            value = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        elif key == 'fc.weight':
            value = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
        elif leaf == 'weight':  # BatchNorm scale
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == 'running_var':
            value = rng.uniform(0.5, 2.0, shape)
        elif leaf in ('bias', 'running_mean'):
            value = rng.normal(0.0, 0.2, shape)
        else:
            raise ValueError(f'no recipe for {key}')
        out[key] = np.asarray(value, dtype)
    return out


def digest(state_dict: dict) -> str:
    """SHA-256 over the keys, dtypes, shapes and bytes of a state dict, in its order."""
    h = hashlib.sha256()
    for key, value in state_dict.items():
        h.update(f'{key}|{value.dtype.str}|{value.shape}|'.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()
