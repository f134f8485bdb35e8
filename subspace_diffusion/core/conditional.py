"""Controllable generation across a subspace chain: inpainting and colourisation by replacement.

Both are a known linear measurement with orthonormal rows, `y = M x0` with `M M^T = I`, seen through
its projector `Pi = M^T M` (a pure function `project(x)` on full-space arrays (B, H, W, C)):
- inpainting: `Pi x = mask * x` (mask 1 on known pixels);
- colourisation: per pixel `Pi x = C^T diag(1, 0, 0) C x`, C the orthogonal colour transform whose first
  row is the luminance direction (1, 1, 1)/sqrt(3) (score-SDE's decoupling idea), i.e. the channel mean.

The sampler is any fixed-grid sampler of `sampling.py` (PC, Heun, DPM-Solver++) that, after every move,
replaces the known part by the data noised to the current time with the exact forward kernel,
`Pi (alpha(t) x0 + sigma(t) z)` (score-SDE's replacement method): `replacement` is that hook. In subspace
stage k the state is in level-k coordinates: it is lifted to full space, completed with the dropped pieces
drawn from their Gaussian model `N(alpha mu_j, v_j(t))` (SPEC section 3), the known part is imposed, and the
result is projected back with `U_k^T`. The final step (`keep_known`) sets the known part to the clean data.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion.core.diffusion import Diffusion

MASKS = ('left_half', 'right_half', 'top_half', 'bottom_half', 'center', 'random')


def colour_transform() -> np.ndarray:
    """Orthogonal (3, 3) C with rows (1,1,1)/sqrt3, (1,-1,0)/sqrt2, (1,1,-2)/sqrt6: grey first, two chroma axes."""
    return np.array([[1, 1, 1], [1, -1, 0], [1, 1, -2]], np.float64) / np.sqrt([[3.], [2.], [6.]])


def inpainting(mask) -> Callable:
    """Projector x -> mask * x onto the known pixels; mask (H, W, 1 or C) or (B, H, W, 1 or C), 1 = known."""
    mask = jnp.asarray(mask, jnp.float32)
    return lambda x: x * mask


def colorization() -> Callable:
    """Projector onto the grey part x -> C^T diag(1,0,0) C x per pixel, for x (B, H, W, 3)."""
    grey = jnp.asarray(colour_transform()[:1], jnp.float32)  # (1, 3): the known row of C
    return lambda x: (x @ grey.T) @ grey


def make_mask(kind: str, shape, key=None, fraction: float = 0.5) -> np.ndarray:
    """(H, W, 1) mask, 1 = known, 0 = to fill in: `kind` names the missing region (MASKS); 'random' drops `fraction`."""
    h, w = shape[:2]
    mask = np.ones((h, w, 1), np.float32)
    if kind == 'left_half':
        mask[:, :w // 2] = 0
    elif kind == 'right_half':
        mask[:, w // 2:] = 0
    elif kind == 'top_half':
        mask[:h // 2] = 0
    elif kind == 'bottom_half':
        mask[h // 2:] = 0
    elif kind == 'center':
        mask[h // 4:h - h // 4, w // 4:w - w // 4] = 0
    elif kind == 'random':
        mask = np.asarray(jax.random.uniform(key, (h, w, 1)) >= fraction, np.float32)
    else:
        raise ValueError(f'unknown mask {kind!r}: use one of {MASKS} or a path to a mask PNG')
    return mask


def replacement(data, project: Callable, diffusion: Diffusion) -> Callable:
    """impose(key, x, k, t) for the samplers: the level-k state with its known part set to Pi(alpha(t) data + sigma(t) z).

    data (B, H, W, C) in model space (only Pi data is used). In stage k the state is lifted to full space
    with every dropped piece drawn from its Gaussian model, the known part replaced, and projected back.
    """
    sde, subspace = diffusion.sde, diffusion.subspace

    def impose(key, x, k, t):
        kz, kr = jax.random.split(key)
        known = project(sde.alpha(t) * data + sde.sigma(t) * jax.random.normal(kz, data.shape, data.dtype))
        full = subspace.lift_to_full(sde, x, k, t, jax.random.normal(kr, data.shape, data.dtype)) if k else x
        full = full - project(full) + known
        return subspace.chain.down(full, k) if k else full

    return impose


def keep_known(x, data, project: Callable):
    """The final step of a conditional sample: its known part set to the clean data, x and data (B, H, W, C)."""
    return x - project(x) + project(data)
