"""Controllable generation across a subspace chain: inpainting and colourisation by replacement.

Both are a known linear measurement with orthonormal rows, `y = M x0` with `M M^T = I`, seen through
its projector `Pi = M^T M` (a pure function `project(x)` on full-space arrays (B, H, W, C)):
- inpainting: `Pi x = mask * x` (mask 1 on known pixels);
- colourisation: per pixel `Pi x = C^T diag(1, 0, 0) C x`, C the orthogonal colour transform whose first
  row is the luminance direction (1, 1, 1)/sqrt(3) (score-SDE's decoupling idea), i.e. the channel mean.

The sampler is the PC sampler of `sampling.pc_sample` that, after every corrector and predictor step,
replaces the known part by the data noised to the current time with the exact forward kernel,
`Pi (alpha(t) x0 + sigma(t) z)` (score-SDE's replacement method). In subspace stage k the state is in
level-k coordinates: it is lifted to full space, completed with the dropped pieces drawn from their
Gaussian model `N(alpha mu_j, v_j(t))` (SPEC section 3), the known part is imposed, and the result is
projected back with `U_k^T`. The final step sets the known part to the clean data.
"""
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion.sampling import SamplerConfig, pc_sample
from subspace_diffusion.sde import SDE
from subspace_diffusion.subspaces import Subspace

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


def _full_state(key, x, k, t, sde: SDE, subspace: Optional[Subspace]):
    """U_k x_k plus every dropped piece j <= k drawn from N(alpha mu_j, v_j(t)): a full-space state (B, *shapes[0])."""
    if not k:
        return x
    chain = subspace.chain
    full = chain.up(x, k)
    z = jax.random.normal(key, full.shape, full.dtype)
    for j in range(1, k + 1):
        full = full + sde.alpha(t) * subspace.mu_full(j)[None] + jnp.sqrt(
            subspace.lift_variance(sde, j, t)) * chain.piece(z, j)
    return full


def impose(key, x, k, t, data, project: Callable, sde: SDE, subspace: Optional[Subspace] = None):
    """Level-k state x (B, *shapes[k]) with its known part set to Pi(alpha(t) data + sigma(t) z); data (B, H, W, C)."""
    kz, kr = jax.random.split(key)
    known = project(sde.alpha(t) * data + sde.sigma(t) * jax.random.normal(kz, data.shape, data.dtype))
    full = _full_state(kr, x, k, t, sde, subspace)
    full = full - project(full) + known
    return subspace.chain.down(full, k) if k else full


def conditional_pc_sample(key, data, project: Callable, sde: SDE, score_fns: Sequence[Callable], cfg: SamplerConfig,
                          subspace: Optional[Subspace] = None):
    """Multi-level PC sampler with the known part replaced -> (samples (B, *shapes[0]) with Pi x = Pi data, NFE).

    data (B, H, W, C) in model space (only Pi data is used); score_fns[k] is the level-k score, as in
    `sampling.pc_sample` (whose grid, stages, lift and final denoising this follows step for step).
    """
    data = jnp.asarray(data, jnp.float32)
    x, nfe = pc_sample(key, data.shape[0], sde, score_fns, cfg, subspace, shape=data.shape[1:], dtype=data.dtype,
                       impose=functools.partial(impose, data=data, project=project, sde=sde, subspace=subspace))
    # Final step: the known part is the clean data itself.
    return x - project(x) + project(data), nfe
