"""The process a sampler runs: one SDE on full space or across a subspace chain (SPEC sections 1-3).

`Diffusion` is the one value that every sampler, the likelihood and the conditional sampler take in
place of the group (SDE, chain with statistics and cutoffs, image shape, sharding, dtype) that each of
them needs. Score functions stay separate: they close over network parameters, which are traced.
"""
import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import Subspace


@dataclasses.dataclass(frozen=True, eq=False)
class Diffusion:
    """SDE, subspace (None: full space), per-example full-space shape, batch sharding (or None) and state dtype."""

    sde: SDE
    shape: tuple
    subspace: Optional[Subspace] = None
    sharding: Any = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, 'shape', tuple(self.shape))
        if self.subspace is not None and tuple(self.subspace.chain.shapes[0]) != self.shape:
            raise ValueError(f'the chain starts at {tuple(self.subspace.chain.shapes[0])}, not at the shape {self.shape}')

    @property
    def num_levels(self) -> int:
        """K (0 in full space)."""
        return self.subspace.num_levels if self.subspace is not None else 0

    @property
    def cutoffs(self) -> tuple:
        """t_1 < ... < t_K (() in full space)."""
        return self.subspace.cutoffs if self.subspace is not None else ()

    def level_shape(self, k: int) -> tuple:
        """Per-example shape of level-k coordinates."""
        return tuple(self.subspace.chain.shapes[k]) if k else self.shape

    def cost(self, k: int) -> float:
        """n_k / d: what one network call at level k counts in the effective NFE (SPEC section 3)."""
        return math.prod(self.level_shape(k)) / math.prod(self.shape)

    def effective_nfe(self, calls_per_level: dict) -> float:
        """Sum over network calls of n_level / d, from {level: calls}."""
        return float(sum(n * self.cost(k) for k, n in calls_per_level.items()))

    def constrain(self, x):
        """x with the batch sharding imposed inside a compiled program (unchanged without one)."""
        return x if self.sharding is None else jax.lax.with_sharding_constraint(x, self.sharding)

    def prior(self, key, batch_size: int):
        """A draw of the prior at T in full space, (B, *shape): every method and space starts from it (`down`)."""
        return self.sde.prior_sample(key, (batch_size,) + self.shape, self.dtype)

    def down(self, x, k: int):
        """Full-space x (B, *shape) -> level-k coordinates U_k^T x (k = 0: x). The prior's image is the level-k
        prior, U_k having orthonormal columns, so full space and every chain start from the same draw."""
        return self.subspace.chain.down(x, k) if k else x

    def noise(self, key, batch_size: int, k: int = 0):
        """Standard normal (B, *level_shape(k))."""
        return jax.random.normal(key, (batch_size,) + self.level_shape(k), self.dtype)

    def lift(self, x, k: int, t, key):
        """Level-k state at time t -> level k-1 with fresh noise in the new directions (SPEC section 3, step 4)."""
        return self.subspace.lift(self.sde, x, k, t, self.noise(key, x.shape[0], k - 1))

    def labelled(self, labels) -> 'Diffusion':
        """The process of samples with class labels (B,): lifts from each one's class statistics where the chain has
        them (`Subspace.labelled`), else this process."""
        if self.subspace is None:
            return self
        return dataclasses.replace(self, subspace=self.subspace.labelled(labels))

    def level(self, k: int) -> 'Diffusion':
        """Level k of the chain on its own: a full-space diffusion of level-k coordinates (k = 0: self)."""
        if not k:
            return self
        return Diffusion(self.sde, self.level_shape(k), None, self.sharding, self.dtype)
