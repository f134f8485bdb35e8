"""The run object: a run's settings, its subspace chain and the networks of the levels it has (google-research/vdm style).

`Experiment.build(settings, levels, shared)` builds the chain (fitting PCA kinds explicitly on training
images; pooling reads no data) and the level networks. From them come the training objective (DSM summed
over the levels, each in its own coordinates and time range) and the `Diffusion` the samplers run. The
chain's statistics are files (`statistics.py`); the samplers come from the one factory (`core/sampling.py`).
"""
import dataclasses
import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion.core.diffusion import Diffusion
from subspace_diffusion.core.losses import dsm_loss, training_draws
from subspace_diffusion.core.subspaces import Chain, PieceStats, Subspace, describe_chain, make_chain
from subspace_diffusion.run.data import training_images
from subspace_diffusion.run.networks import Networks
from subspace_diffusion.run.settings import Settings


LABEL_STREAM = 1 << 20  # fold_in index of the label-dropout draw in a training step's key (levels use 0..K)


def level_shapes(settings: Settings) -> list:
    """Per-example shape of each level 0..K of the settings' chain, without building (or fitting) it."""
    d, sub = settings.data, settings.subspace
    if sub.kind == 'pca':  # PCA levels keep the dimensions pooling by 2 would give
        return [d.shape] + [(math.prod(d.shape) // 4 ** k,) for k in range(1, sub.levels + 1)]
    # pooling and patch-PCA keep C channels (patch-PCA keeps the top C components of each patch)
    return [(d.image_size // sub.factor ** k,) * 2 + (d.num_channels,) for k in range(sub.levels + 1)]


def build_chain(settings: Settings) -> Optional[Chain]:
    """The settings' chain (None without levels): pooling from the shape alone; PCA kinds fitted here, explicitly,
    on the first subspace.fit_examples training images."""
    sub = settings.subspace
    if not sub.levels:
        return None
    fit = None
    if sub.kind in ('pca', 'patch_pca'):
        fit, n = [], 0
        for batch in training_images(settings.data):
            fit.append(batch)
            n += batch.shape[0]
            if n >= sub.fit_examples:
                break
        fit = np.concatenate(fit)[:sub.fit_examples]
    return make_chain(sub.kind, settings.data.shape, sub.levels, data=fit, patch=sub.factor)


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Settings, chain (None without levels) and the networks of the levels that have parameters."""

    settings: Settings
    chain: Optional[Chain]
    networks: Networks

    @classmethod
    def build(cls, settings: Settings, levels: Sequence[int], shared: bool = False) -> 'Experiment':
        """The experiment of these levels (0 = full space); `shared`: one network serves every level."""
        chain = build_chain(settings)
        shapes = level_shapes(settings)
        levels = sorted(set(int(k) for k in levels))
        if not levels or any(not 0 <= k < len(shapes) for k in levels):
            raise ValueError(f'levels {levels} are not levels of the {len(shapes) - 1}-level chain '
                             f'(0..{len(shapes) - 1})')
        return cls(settings, chain, Networks.build(settings, {k: shapes[k] for k in levels}, shared))

    @property
    def levels(self) -> tuple:
        """The levels that have networks."""
        return self.networks.levels

    @property
    def num_levels(self) -> int:
        """K (0 without a chain)."""
        return self.chain.num_levels if self.chain is not None else 0

    @property
    def whole_chain(self) -> bool:
        """Every level 0..K has a network (the multi-level sampler runs)."""
        return self.levels == tuple(range(self.num_levels + 1))

    def describe(self) -> str:
        """Where these levels sample, in the words every mode uses."""
        if self.levels == (0,):
            return 'full space'
        if self.whole_chain:
            return describe_chain(self.chain, self.settings.subspace.cutoffs)
        return f'levels {list(self.levels)} of the {describe_chain(self.chain)}'

    def subspace(self, stats: PieceStats) -> Subspace:
        """The chain with these statistics and the settings' cutoffs."""
        return Subspace(self.chain, stats, self.settings.subspace.cutoffs)

    def diffusion(self, stats: Optional[PieceStats], sharding=None) -> Diffusion:
        """What the samplers run: the chain when every level has a network or one subspace level does, else full space."""
        full = self.levels == (0,)
        if not (full or self.whole_chain or len(self.levels) == 1):
            raise ValueError(f'networks for levels {list(self.levels)} sample neither the {self.num_levels}-level '
                             f'chain (levels 0..{self.num_levels}) nor full space (level 0)')
        return Diffusion(self.settings.sde, self.settings.data.shape, None if full else self.subspace(stats), sharding)

    @property
    def sampled_level(self) -> int:
        """k when only the level-k subspace network exists (it samples alone, `make_sampler(level=k)`), else 0."""
        return self.levels[0] if len(self.levels) == 1 else 0

    def t_min(self, k: int) -> float:
        """Lower end of the training time range of level k: t_k (SPEC section 3) or training.eps."""
        if k and self.settings.subspace.train_from_cutoff:
            return self.settings.subspace.cutoffs[k - 1]
        return self.settings.training.eps

    def loss(self, params: dict, images, key, train: bool = True, labels=None, draws=None):
        """(sum over the levels of the level-k DSM loss, {k: loss_k}); images (B, H, W, C) in model space, and for a
        class-conditional model their class labels (B,), of which training drops training.label_dropout.

        draws: {k: (t (B,), z)} in place of the times and noise drawn from `key` (another run's draws, a t grid).
        """
        tr = self.settings.training
        if labels is not None:
            labels = self.drop_labels(labels, key) if train else labels
        losses = {}
        for k in self.levels:
            dsm_key, drop_key = jax.random.split(jax.random.fold_in(key, k))
            # The same chain object as the sampler produces U_k^T x0 (one code path for both).
            x = self.chain.down(images, k) if k else images
            score = self.networks.score(params, k, train=train, dropout_rng=drop_key)
            if labels is not None:
                score = functools.partial(score, y=labels)
            t, z = (draws or {}).get(k) or training_draws(dsm_key, x, self.t_min(k), self.settings.sde.T)
            losses[k] = dsm_loss(score, self.settings.sde, x, t, z, reduce='mean' if tr.reduce_mean else 'half_sum',
                                 likelihood_weighting=tr.likelihood_weighting)
        return sum(losses.values()), losses

    def drop_labels(self, labels, key):
        """Labels (B,) with each replaced by 'no label' (num_classes) with probability training.label_dropout: one
        draw per example, the same at every level (classifier-free guidance training)."""
        drop = jax.random.bernoulli(jax.random.fold_in(key, LABEL_STREAM), self.settings.training.label_dropout,
                                    labels.shape)
        return jnp.where(drop, self.networks.num_classes, labels)
