"""The Python API's arguments, checked at the boundary (docs/bad_input.md, the API table).

Each check returns the value in the form the API computes with, or raises one ValueError that names the
argument, what it got and what it takes: `n=2.5: takes a whole number >= 1`. Nothing reaches JAX or numpy
unchecked, so no argument ends in a traceback from deep inside them or in a silently wrong number.
"""
import math
import numbers
import os
from collections.abc import Mapping
from typing import Optional, Sequence

import ml_collections
import numpy as np
from PIL import Image

from subspace_diffusion.core.sampling import METHODS
from subspace_diffusion.formats.files import config_module, read_json

CONFIG_TAKES = 'takes a config file (.py with get_config()), a settings record (.json) or a ConfigDict'
# Effective NFE per sample beyond any useful budget: five times what the published PC samplers spend (1000 steps of
# one predictor and one corrector call); the fixed-step ODE solvers converge by about 100 on the models here.
USEFUL_NFE = 10_000


def refuse(name: str, got, takes: str) -> ValueError:
    """The one error of an argument: '<name>=<got>: <takes>' (arrays shown by dtype and shape)."""
    if isinstance(got, np.ndarray):
        shown = f'{name} ({got.dtype}, shape {got.shape})'
    else:
        text = repr(os.fspath(got)) if isinstance(got, os.PathLike) else repr(got)
        # A path is shown whole (it is what the user must fix); other long values only by type.
        limit = 4096 if isinstance(got, (str, os.PathLike)) else 80
        shown = f'{name}={text}' if len(text) <= limit and '\n' not in text else f'{name} (a {type(got).__name__})'
    return ValueError(f'{shown}: {takes}')


def _number(value):
    """`value` as a Python int or float when it is one real number (numpy and JAX scalars included), else None."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    if isinstance(value, numbers.Real):
        return value.item() if isinstance(value, np.generic) else value
    if getattr(value, 'shape', None) == () and np.dtype(getattr(value, 'dtype', object)).kind in 'iuf':
        return np.asarray(value).item()
    return None


def whole(name: str, value, minimum: int = 1) -> int:
    """A whole number >= minimum (an int, or a float without a fraction; not a bool or a string)."""
    n = _number(value)
    if isinstance(n, float) and math.isfinite(n) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < minimum:
        raise refuse(name, value, f'takes a whole number >= {minimum}')
    return n


def real(name: str, value) -> float:
    """A finite real number (not a bool or a string)."""
    x = _number(value)
    if x is None or not math.isfinite(x):
        raise refuse(name, value, 'takes a finite number')
    return float(x)


def seed(value) -> int:
    """A PRNG seed: a whole number in [0, 2^32)."""
    n = whole('seed', value, 0)
    if n >= 2 ** 32:
        raise refuse('seed', value, 'takes a whole number in [0, 2^32)')
    return n


def method(value) -> str:
    """A sampling method of the factory (core/sampling.py)."""
    if value not in METHODS:
        raise refuse('method', value, f'takes one of {", ".join(METHODS)}')
    return value


def time(t, T: float) -> float:
    """A diffusion time in (0, T]."""
    x = _number(t)
    if x is None or not 0 < x <= T:
        raise refuse('t', t, f'takes one time in (0, {T:g}]')
    return float(x)


def level(name: str, value, num_levels: int) -> int:
    """A level 0..K of the model's chain."""
    k = _number(value)
    if num_levels == 0 and k != 0:
        raise refuse(name, value, 'takes 0: this model has no subspace chain (config.subspace.levels = 0)')
    if not isinstance(k, int) or not 0 <= k <= num_levels:
        raise refuse(name, value, f'takes a level of the model\'s {num_levels}-level chain, 0..{num_levels}')
    return k


def levels(value, num_levels: int) -> Optional[tuple]:
    """None, or the levels to load: (0,) (full space), (0, ..., K) (the chain) or one level (k,)."""
    if value is None:
        return None
    whole_chain = tuple(range(num_levels + 1))
    takes = f'takes (0,) (full space), {whole_chain} (the chain) or one level (k,) of 0..{num_levels}'
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise refuse('levels', value, takes)
    try:
        chosen = tuple(sorted({level('levels', k, num_levels) for k in value}))
    except ValueError:
        raise refuse('levels', value, takes) from None
    if not (chosen == whole_chain or len(chosen) == 1):
        raise refuse('levels', value, takes)
    return chosen


def step(value) -> Optional[int]:
    """None (the newest checkpoint) or a checkpoint step >= 0."""
    return None if value is None else whole('step', value, 0)


def workdir(value) -> str:
    """An existing directory."""
    if not isinstance(value, (str, os.PathLike)):
        raise refuse('workdir', value, 'takes the path of a run\'s directory (trained or imported)')
    path = os.fspath(value)
    if not os.path.isdir(path):
        raise refuse('workdir', path, 'is a file: takes a run\'s directory' if os.path.exists(path) else
                     'does not exist: takes the path of a run\'s directory (trained or imported)')
    return path


def cache_dir(value) -> Optional[str]:
    """A compilation cache directory, '' (no cache) or None (the default one)."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise refuse('compile_cache', value, "takes a directory, or '' to run without the cache")
    return None if value is None else os.fspath(value)


def image_path(value) -> str:
    """A path whose extension names an image format Pillow writes (.png, .jpg, ...)."""
    if not isinstance(value, (str, os.PathLike)):
        raise refuse('path', value, 'takes a file path ending in .png')
    path = os.fspath(value)
    Image.init()  # every format plugin registered
    ext = os.path.splitext(path)[1].lower()
    if Image.registered_extensions().get(ext) not in Image.SAVE:
        what = f'has the extension {ext}, which names no image format Pillow writes' if ext else 'has no extension'
        raise refuse('path', path, f'{what}: add .png (or another format Pillow writes: .jpg, .bmp, .tif, .webp)')
    return path


def config(value) -> ml_collections.ConfigDict:
    """A ConfigDict or mapping, a settings record (.json) or a config file (.py with get_config())."""
    if isinstance(value, ml_collections.ConfigDict):
        return value
    if isinstance(value, Mapping):
        return ml_collections.ConfigDict(dict(value))
    if not isinstance(value, (str, os.PathLike)):
        raise refuse('config', value, CONFIG_TAKES)
    path = os.fspath(value)
    if not os.path.isfile(path):
        raise refuse('config', path, ('is a directory: ' if os.path.isdir(path) else 'no such file: ') + CONFIG_TAKES)
    if path.endswith('.json'):
        return ml_collections.ConfigDict(read_json(path, 'settings record', 'pass another config='))
    if not path.endswith('.py'):
        raise refuse('config', path, f'is neither .py nor .json: {CONFIG_TAKES}')
    try:
        module = config_module(path)
    except Exception as e:  # noqa: BLE001 -- whatever the file raises while it is imported
        raise refuse('config', path, f'cannot be loaded ({type(e).__name__}: {_first_line(e)}): {CONFIG_TAKES}') \
            from None
    if not callable(getattr(module, 'get_config', None)):
        raise refuse('config', path, f'has no get_config(): {CONFIG_TAKES}')
    try:
        return module.get_config()
    except Exception as e:  # noqa: BLE001
        raise refuse('config', path, f'get_config() raised {type(e).__name__}: {_first_line(e)}') from None


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


def array(name: str, value, shape: tuple, what: str) -> np.ndarray:
    """A finite real float32 array of shape (B, *shape), B >= 1 (`what` says what the array is)."""
    x = np.asarray(value)
    if x.dtype == bool or x.dtype.kind not in 'uif':
        raise refuse(name, x, f'takes real numbers: {what} of shape (B, {", ".join(map(str, shape))})')
    if x.shape[1:] != tuple(shape) or x.ndim != len(shape) + 1 or x.shape[0] == 0:
        raise refuse(name, x, f'takes {what} of shape (B, {", ".join(map(str, shape))}) with B >= 1')
    x = x.astype(np.float32)
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise refuse(name, np.asarray(value), f'holds {bad} NaN or infinite value(s): takes finite {what}')
    return x


def images(value, shape: tuple) -> np.ndarray:
    """Images (N, *shape) as float32 in [0, 1]: floats in [0, 1] as they are, uint8 (what a PNG gives) / 255."""
    x = np.asarray(value)
    if x.dtype == np.uint8:
        return array('images', x, shape, 'images').astype(np.float32) / 255.
    if x.dtype.kind != 'f':
        raise refuse('images', x, 'takes float images in [0, 1] (what sample returns) or uint8 images in [0, 255]')
    x = array('images', x, shape, 'images in [0, 1]')
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise refuse('images', np.asarray(value), f'has values in [{lo:g}, {hi:g}]: takes images in [0, 1] (what '
                     f'sample returns; model-space arrays, [-1, 1] for a centred model, are not images) or uint8')
    return x


def budget_applies(method_name: str, nfe, steps):
    """Refuse a budget the method does not take: `nfe` for the fixed-step ODE solvers, `steps` for pc."""
    own = 'steps' if method_name == 'pc' else None if method_name == 'ode' else 'nfe'
    for name, value in (('nfe', nfe), ('steps', steps)):
        if value is not None and name != own:
            raise refuse(name, value, f'does not apply to method {method_name!r}, which takes '
                         + (f'{own}=' if own else 'neither (its tolerances are the settings\')'))


def nfe_budget(nfe, minimum: float, method_name: str) -> float:
    """A finite effective-NFE budget a fixed-step solver can keep: one step per stage and the denoising call."""
    if real('nfe', nfe) < minimum:
        raise refuse('nfe', nfe, f'is below the smallest budget {method_name} can keep on this model ({minimum:g}: '
                     f'one step per stage of the chain, and the final denoising call): takes nfe >= {minimum:g}')
    return float(nfe)


def class_labels(value, n: int, num_classes: int) -> Optional[np.ndarray]:
    """None, or the classes of n samples as int32 (n,): one class for all, or one per sample, each in
    [0, num_classes) of a class-conditional model."""
    if value is None:
        return None
    if not num_classes:
        raise refuse('labels', value, 'takes None: this model is unconditional (config.model.num_classes = 0); '
                     'train a class-conditional one (model.num_classes > 0) to sample by class')
    takes = f'takes one class or {n} classes (one per sample) in 0..{num_classes - 1}'
    one = _number(value)
    array = np.full(n, one) if one is not None else np.asarray(value) \
        if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)) else None
    if array is None or array.dtype.kind not in 'iuf' or array.shape != (n,):
        raise refuse('labels', value, takes)
    if not (np.all(np.isfinite(array)) and np.all(array == np.round(array))
            and 0 <= array.min() and array.max() < num_classes):
        raise refuse('labels', value, takes)
    return array.astype(np.int32)


def guidance(value, num_classes: int, labelled: bool) -> Optional[float]:
    """None (the settings' sampling.guidance), or a classifier-free guidance weight w >= 0 for labelled samples of a
    class-conditional model."""
    if value is None:
        return None
    if not num_classes:
        raise refuse('guidance', value, 'takes None: this model is unconditional (config.model.num_classes = 0), '
                     'and guidance steers a class-conditional one towards its labels')
    if not labelled:
        raise refuse('guidance', value, 'steers samples towards their labels: pass labels= too')
    w = real('guidance', value)
    if w < 0:
        raise refuse('guidance', value, 'takes a weight w >= 0 (0: the class-conditional model itself)')
    return w
