"""score_sde_pytorch / subspace-diffusion state_dicts <-> NCSN++ parameters of `models/ncsnpp.py`, by name.

Our top-level modules are named `all_modules_<i>` after the reference's ModuleList, and the modules
inside them carry the reference's attribute names (GroupNorm_0, Conv_0, Dense_0, NIN_0, Conv2d_0, ...),
so a parameter path maps to a torch key by joining with '.' and renaming the leaf:
Conv / Dense `kernel` -> `weight` (HWIO -> OIHW, (in, out) -> (out, in)), GroupNorm `scale` -> `weight`;
NIN `W` / `b`, `bias` and the Fourier `W` keep name and layout.
"""
import numpy as np
from flax import traverse_util

FOURIER_KEY = 'all_modules.0.W'  # not trainable in the reference: absent from EMA and optimiser lists
BUFFERS = ('sigmas',)  # registered buffers of the reference model; no counterpart here


def torch_key(path) -> str:
    """Flax parameter path ('all_modules_4', 'Conv_0', 'kernel') -> torch key 'all_modules.4.Conv_0.weight'."""
    *modules, leaf = path
    top = modules[0].replace('all_modules_', 'all_modules.')
    leaf = {'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)
    return '.'.join([top, *modules[1:], leaf])


def to_torch(path, value):
    """Our array at `path` in the reference's layout."""
    value = np.asarray(value)
    if path[-1] == 'kernel':
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


def from_torch(path, value):
    """A reference array in our layout for the parameter at `path` (inverse of `to_torch`)."""
    value = np.asarray(value)
    if path[-1] == 'kernel':
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def torch_layout(params) -> dict:
    """{torch key (no 'module.' prefix): (flax path, torch shape)} for a parameter tree (arrays or shapes)."""
    layout = {}
    for path, leaf in traverse_util.flatten_dict(params).items():
        shape = tuple(leaf.shape)
        torch_shape = (shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])) \
            if path[-1] == 'kernel' else shape
        layout[torch_key(path)] = (path, torch_shape)
    return layout


def strip_prefix(state_dict) -> dict:
    """Drop DataParallel's 'module.' prefix from every key (keys without it are kept as they are)."""
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
