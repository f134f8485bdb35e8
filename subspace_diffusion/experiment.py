"""The run object: what typed settings and explicit choices determine, shared by every job.

`Experiment(settings, levels, shared)`: the SDE, the chain (fitted for PCA kinds), the network, and
which levels have parameters (`levels`; `shared`: one network serves them all). Parameters are a dict
keyed by model: 'level_k' for the level-k network (the paper's separate models), or one 'shared'
entry used at every level's resolution. It builds the loss, each level's score, the chain's piece
statistics (kept per chain in the workdir), the `Subspace` value, and the snapshot sampler.
"""
import dataclasses
import functools
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from subspace_diffusion import data
from subspace_diffusion.files import atomic_json
from subspace_diffusion.losses import dsm_loss
from subspace_diffusion.models.mlp import MLPScore
from subspace_diffusion.models.ncsnpp import NCSNpp
from subspace_diffusion.models.score import get_score_fn
from subspace_diffusion.ode_sampling import SOLVERS, make_ode_sampler
from subspace_diffusion.sampling import make_sampler
from subspace_diffusion.sde import bcast
from subspace_diffusion.settings import Settings
from subspace_diffusion.subspaces import (Chain, PieceStats, Subspace, compute_stats, describe_chain,
                                          describe_subspace, make_chain, signature_id)


@functools.lru_cache(maxsize=4)
def build_chain(settings: Settings) -> Chain:
    """The settings' subspace chain; PCA kinds are fitted (once) on the first subspace.fit_examples training images."""
    sub = settings.subspace
    fitted = None
    if sub.kind in ('pca', 'patch_pca'):
        fitted, n = [], 0
        for batch in training_images(settings.data):
            fitted.append(batch)
            n += batch.shape[0]
            if n >= sub.fit_examples:
                break
        fitted = np.concatenate(fitted)[:sub.fit_examples]
    return make_chain(sub.kind, settings.data.shape, sub.levels, data=fitted, patch=sub.factor)


def training_images(data_settings, batch_size: int = 256):
    """One pass over the training images (B, H, W, C) in model space, without flips or dequantisation noise."""
    return (b['image'] for b in data.get_dataset(data_settings, 'train', batch_size, augment=False, repeat=False))


class Experiment:
    """SDE, chain, network and parameter sets of a run; builds losses, scores, statistics and samplers."""

    def __init__(self, settings: Settings, levels: Sequence[int], shared: bool = False):
        self.settings = settings
        self.sde = settings.sde
        self.chain = build_chain(settings) if settings.subspace.levels else None
        self.cutoffs = settings.subspace.cutoffs
        K = self.num_levels
        self.levels = tuple(sorted(set(int(k) for k in levels)))
        if not self.levels or any(not 0 <= k <= K for k in self.levels):
            raise ValueError(f'levels {list(levels)} are not levels of the {K}-level chain (0..{K})')
        self.shared = shared
        self.network = settings.network
        self.model = NCSNpp(net=self.network)  # image levels; vector (PCA) levels get an MLP
        self.vector_model = MLPScore(net=settings.vector_network)
        if shared and len({self.model_of(k) is self.model for k in self.levels}) > 1:
            raise ValueError('one shared network cannot serve both image and vector (PCA) levels: set '
                             'config.subspace.shared_params=False')

    def model_of(self, k: int):
        """The network module of level k: NCSN++ for image coordinates, the MLP for vectors."""
        return self.model if len(self.level_shape(k)) == 3 else self.vector_model

    @property
    def num_levels(self) -> int:
        """K (0 without a chain)."""
        return self.chain.num_levels if self.chain is not None else 0

    def level_shape(self, k: int) -> tuple:
        """Per-example shape of level-k coordinates."""
        return tuple(self.chain.shapes[k]) if self.chain is not None else self.settings.data.shape

    def describe(self) -> str:
        """Where these levels sample, in the words every mode uses."""
        K = self.num_levels
        if K and self.levels == tuple(range(K + 1)):
            return describe_subspace(self.chain, self.cutoffs)
        return 'full space' if self.levels == (0,) else f'levels {list(self.levels)} of the {describe_chain(self.chain)}'

    def param_key(self, k: int) -> str:
        """Name of the parameter set that serves level k."""
        return 'shared' if self.shared else f'level_{k}'

    @property
    def param_keys(self) -> tuple:
        """Names of the parameter sets, in level order."""
        return tuple(dict.fromkeys(self.param_key(k) for k in self.levels))

    def init_params(self, key) -> dict:
        """Fresh parameters {name: params}; a shared model is initialised at the finest level."""
        params = {}
        for k in self.levels:
            name = self.param_key(k)
            if name not in params:
                x = jnp.zeros((1,) + self.level_shape(k), jnp.float32)
                variables = self.model_of(k).init({'params': jax.random.fold_in(key, k), 'dropout': key}, x,
                                                  jnp.ones((1,)), train=False)
                params[name] = variables['params']
        return params

    def score_fn(self, params: dict, k: int, train=False, dropout_rng=None):
        """Level-k score callable s_k(x (B, *level_shape(k)), t (B,)); params {name: params}."""
        score = get_score_fn(self.model_of(k), self.sde, params[self.param_key(k)], train=train,
                             dropout_rng=dropout_rng)
        offset = self.input_offset(k)
        if offset is None:
            return score
        # The network was trained on scaler(U_k^T u) = U_k^T x + offset: feed it x + alpha(t) offset.
        return lambda x, t: score(x + bcast(self.sde.alpha(t), x) * offset, t)

    def input_offset(self, k: int):
        """Constant added to level-k coordinates before the network under subspace.scale_after_pooling, or None.

        The reference pools [0,1] images and then applies the data scaler, so its level-k network sees
        scaler(D^k u) = D^k x + b (1 - D^k 1) for scaler(u) = a u + b, not D^k x: for centred data and
        pooling by 2 that is +1 at 16x16 and +3 at 8x8 of CIFAR-10 (models/subspace_model.py there).
        """
        shift = data.data_offset(self.settings.data.centered)
        if not k or not self.settings.subspace.scale_after_pooling or not shift:
            return None
        ones = jnp.ones((1,) + self.level_shape(0), jnp.float32)
        return shift * (1.0 - self.chain.down(ones, k)[0])

    def t_min(self, k: int) -> float:
        """Lower end of the training time range of level k: t_k (SPEC section 3) or training.eps."""
        if k and self.settings.subspace.train_from_cutoff:
            return self.cutoffs[k - 1]
        return self.settings.training.eps

    def loss(self, params: dict, images, key, train=True):
        """(sum over the levels of the level-k DSM loss, {k: loss_k}); images (B, H, W, C) in model space."""
        tr = self.settings.training
        losses = {}
        for k in self.levels:
            dsm_key, drop_key = jax.random.split(jax.random.fold_in(key, k))
            # The same chain object as the sampler produces U_k^T x0 (one code path for both).
            x = self.chain.down(images, k) if k else images
            score = self.score_fn(params, k, train=train, dropout_rng=drop_key)
            losses[k] = dsm_loss(score, self.sde, x, dsm_key, self.t_min(k),
                                 reduce='mean' if tr.reduce_mean else 'sum',
                                 likelihood_weighting=tr.likelihood_weighting)
        return sum(losses.values()), losses

    # ------------------------------------------------------------------ piece statistics

    def stats_path(self, workdir) -> str:
        """subspace.stats_path, or <workdir>/subspace_stats_<chain id>.npz: one file per chain, never shared."""
        return self.settings.subspace.stats_path or os.path.join(
            workdir, f'subspace_stats_{signature_id(self.chain.signature())}.npz')

    def measure_stats(self, workdir, write: bool = True) -> PieceStats:
        """mu_j, sigma_perp_j and RMS distances of the chain on the training set; written as .npz and .json."""
        logging.info('measuring the statistics of the %s on the training set', describe_chain(self.chain))
        stats = compute_stats(self.chain, training_images(self.settings.data))
        for k in range(1, self.num_levels + 1):
            logging.info('level %d %s: RMS distance per orthogonal dim %.4f, piece sigma_perp %.4f', k,
                         'x'.join(map(str, self.chain.shapes[k])), stats.rms_distance[k - 1], stats.sigma_perp[k - 1])
        if write:
            path = self.stats_path(workdir)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            stats.save(path)
            atomic_json(os.path.splitext(path)[0] + '.json', self._stats_table(stats))
            logging.info('wrote %s', path)
        return stats

    def _stats_table(self, stats: PieceStats) -> dict:
        return {
            'chain': self.chain.signature(),
            'data_space': 'centered [-1,1]' if self.settings.data.centered else '[0,1]',
            'levels': [{'level': k, 'shape': list(self.chain.shapes[k]),
                        'rms_distance_per_orthogonal_dim': float(stats.rms_distance[k - 1]),
                        'piece_sigma_perp': float(stats.sigma_perp[k - 1]),
                        'piece_mean_norm': float(np.linalg.norm(stats.mu[k - 1]))}
                       for k in range(1, self.num_levels + 1)]}

    def load_stats(self, workdir, write: bool = True) -> Optional[PieceStats]:
        """The chain's statistics from subspace.stats_path or the workdir; measured (and written) when absent."""
        if not self.num_levels:
            return None
        path = self.stats_path(workdir)
        if not os.path.exists(path):
            if self.settings.subspace.stats_path:
                raise FileNotFoundError(f'config.subspace.stats_path={path!r} does not exist: point it at a '
                                        f'statistics file, or leave it empty to measure them into the workdir')
            return self.measure_stats(workdir, write)
        stats = PieceStats.load(path)
        if stats.signature != self.chain.signature():
            raise ValueError(f'the statistics in {path} are of the chain {stats.signature}, this run uses '
                             f'{self.chain.signature()}: point config.subspace.stats_path at statistics of this '
                             f'chain, or leave it empty to keep one file per chain in the workdir')
        return stats

    def subspace(self, stats: Optional[PieceStats]) -> Optional[Subspace]:
        """The chain with these statistics and the settings' cutoffs (None without a chain)."""
        return Subspace(self.chain, stats, self.cutoffs) if self.chain is not None else None

    def sampling_subspace(self, stats: Optional[PieceStats]) -> Optional[Subspace]:
        """The Subspace the samplers take: every level 0..K present -> the chain; only level 0 -> None."""
        K = self.num_levels
        if K and self.levels == tuple(range(K + 1)):
            return self.subspace(stats)
        if self.levels == (0,):
            return None
        raise ValueError(f'networks for levels {list(self.levels)} sample neither the {K}-level chain (levels '
                         f'0..{K}) nor full space (level 0)')

    def sampler(self, stats, sharding=None):
        """(jitted sample(params, key, n) -> (n, H, W, C) model-space images, effective NFE) for the levels.

        The PC sampler, or a fixed-step ODE solver (sampling.method). All levels 0..K: the multi-level sampler. Only level 0: the full-space sampler. Only a level
        k > 0 (a training run of one subspace level): that level alone from T down to t_k, denoised
        there and shown up-projected.
        """
        sampling = self.settings.sampling
        fixed_ode = sampling.method in SOLVERS
        cfg, make = (sampling.ode_config(), make_ode_sampler) if fixed_ode else (sampling.pc, make_sampler)
        if len(self.levels) == 1 and self.levels[0]:
            top = self.levels[0]
            cfg = dataclasses.replace(cfg, eps=self.cutoffs[top - 1])
            sample, nfe = make(self.sde, cfg, lambda params: [self.score_fn(params, top)],
                               shape=self.level_shape(top), sharding=sharding)
            up = jax.jit(lambda x: self.chain.up(x, top))
            return (lambda params, key, n: up(sample(params, key, n))), nfe * self.chain.dim(top) / self.chain.dim(0)
        return make(self.sde, cfg, lambda params: [self.score_fn(params, k) for k in self.levels],
                    self.sampling_subspace(stats), self.level_shape(0), sharding)

