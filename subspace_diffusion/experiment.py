"""The run object: what a config determines (SDE, chain, cutoffs, network, trained levels), shared by train and eval.

Parameters are a dict keyed by model: 'level_k' for the level-k network (the paper's separate
models), or a single 'shared' entry used at every level's resolution (`subspace.shared_params`).
"""
import os

import jax
import jax.numpy as jnp
from absl import logging

from subspace_diffusion import analysis
from subspace_diffusion.losses import dsm_loss
from subspace_diffusion.data import data_offset
from subspace_diffusion.models.ncsnpp import NCSNpp, Network, check_input_size
from subspace_diffusion.models.score import get_score_fn
from subspace_diffusion.sampling import SamplerConfig, check_cutoffs, make_sampler
from subspace_diffusion.sde import _bcast, make_sde
from subspace_diffusion.subspaces import PieceStats

ALL_LEVELS = -1  # subspace.train_level value that trains every level of the chain in one run


class Experiment:
    """SDE, chain, cutoffs, model and trained levels of one config; builds losses, scores and samplers.

    `levels` and `shared` name the parameter sets explicitly (a checkpoint's record, an import); left
    out, they come from subspace.train_level and subspace.shared_params.
    """

    def __init__(self, config, levels=None, shared=None):
        self.config = config
        sub = config.subspace
        self.sde = make_sde(config.sde)
        self.chain = analysis.build_chain(config) if sub.levels else None
        K = self.num_levels
        self.cutoffs = tuple(check_cutoffs(sub.cutoffs, K, self.sde.T)) if K else ()
        if levels is not None:
            self.levels = tuple(sorted(levels))
        elif sub.train_level == ALL_LEVELS:
            self.levels = tuple(range(K + 1))
        else:
            self.levels = (sub.train_level,)
        if not self.levels or any(not 0 <= k <= K for k in self.levels):
            raise ValueError(f'subspace.train_level={sub.train_level} is not a level of the {K}-level chain: '
                             f'use 0..{K}, or {ALL_LEVELS} to train every level in one run')
        for k in self.levels:
            if len(self.level_shape(k)) != 3:
                raise ValueError(f'subspace.kind={sub.kind!r} gives level-{k} coordinates of shape '
                                 f'{self.level_shape(k)}, not an image: a level-k network needs '
                                 f"subspace.kind='pooling' or 'patch_pca'")
        self.shared = bool(sub.shared_params) if shared is None else shared
        self.network = Network.from_config(config)
        sizes = {self.level_shape(k)[1] for k in self.levels}
        if self.shared and len(sizes) > 1 and self.network.attention_placement == 'resolution':
            raise ValueError("subspace.shared_params=True runs one network at several resolutions, which needs "
                             "the same attention blocks at each: set config.model.attention_placement='depth'")
        for k in self.levels:
            check_input_size((1,) + self.level_shape(k), self.network)
        if sub.scale_after_pooling and sub.kind != 'pooling':
            raise ValueError(f"subspace.scale_after_pooling=True is the reference's pooling convention; "
                             f"subspace.kind={sub.kind!r} needs subspace.scale_after_pooling=False")
        self.model = NCSNpp(net=self.network)

    @property
    def num_levels(self) -> int:
        """K (0 without a chain)."""
        return self.chain.num_levels if self.chain is not None else 0

    def level_shape(self, k: int) -> tuple:
        """Per-example shape of level-k coordinates."""
        return tuple(self.chain.shapes[k]) if self.chain is not None else analysis.image_shape(self.config)

    def param_key(self, k: int) -> str:
        """Name of the parameter set that serves level k."""
        return 'shared' if self.shared else f'level_{k}'

    @property
    def param_keys(self) -> tuple:
        """Names of the trained parameter sets, in level order."""
        return tuple(dict.fromkeys(self.param_key(k) for k in self.levels))

    def init_params(self, key) -> dict:
        """Fresh parameters {name: params}; a shared model is initialised at the finest trained level."""
        params = {}
        for k in self.levels:
            name = self.param_key(k)
            if name not in params:
                x = jnp.zeros((1,) + self.level_shape(k), jnp.float32)
                variables = self.model.init({'params': jax.random.fold_in(key, k), 'dropout': key}, x,
                                            jnp.ones((1,)), train=False)
                params[name] = variables['params']
        return params

    def score_fn(self, params: dict, k: int, train=False, dropout_rng=None):
        """Level-k score callable s_k(x (B, *level_shape(k)), t (B,))."""
        score = get_score_fn(self.model, self.sde, params[self.param_key(k)], train=train, dropout_rng=dropout_rng)
        offset = self.input_offset(k)
        if offset is None:
            return score
        # The network was trained on scaler(U_k^T u) = U_k^T x + offset: feed it x + alpha(t) offset.
        return lambda x, t: score(x + _bcast(self.sde.alpha(t), x) * offset, t)

    def input_offset(self, k: int):
        """Constant added to level-k coordinates before the network under subspace.scale_after_pooling, or None.

        The reference pools [0,1] images and then applies the data scaler, so its level-k network sees
        scaler(D^k u) = D^k x + b (1 - D^k 1) for scaler(u) = a u + b, not D^k x: for centred data and
        pooling by 2 that is +1 at 16x16 and +3 at 8x8 of CIFAR-10 (models/subspace_model.py there).
        """
        if not k or not self.config.subspace.scale_after_pooling:
            return None
        shift = data_offset(self.config.data.centered)
        if not shift:
            return None
        ones = jnp.ones((1,) + self.level_shape(0), jnp.float32)
        return shift * (1.0 - self.chain.down(ones, k)[0])

    def t_min(self, k: int) -> float:
        """Lower end of the training time range of level k: t_k (SPEC section 3) or training.eps."""
        if k and self.config.subspace.get('train_from_cutoff', True):
            return self.cutoffs[k - 1]
        return self.config.training.eps

    def loss(self, params: dict, images, key, train=True):
        """(sum over trained levels of the level-k DSM loss, {k: loss_k}); images (B, H, W, C) in model space."""
        tr = self.config.training
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

    def load_stats(self, workdir, compute_if_missing=True, write=True):
        """PieceStats of the chain from subspace.stats_path or <workdir>; measured on the training set if absent."""
        if not self.num_levels:
            return None
        path = analysis.stats_path(self.config, workdir)
        if os.path.exists(path):
            return PieceStats.load(path, self.chain)
        if not compute_if_missing:
            raise FileNotFoundError(f'subspace statistics {path} not found: run `main.py --mode=subspace_stats` '
                                    f'with this config, or set subspace.stats_path')
        logging.info('no subspace statistics at %s: measuring them on the training set', path)
        return analysis.subspace_stats(self.config, workdir, chain=self.chain, write=write)

    def sampler(self, stats, sharding=None, **overrides):
        """(jitted sample(params, key, n) -> (n, H, W, C) model-space images, effective NFE) for the trained levels.

        All levels 0..K trained: the multi-level sampler. Only level 0: the full-space sampler. Only a
        level k > 0: that level alone from T down to t_k, denoised there and shown up-projected.
        """
        K = self.num_levels
        if self.levels == tuple(range(K + 1)):
            chain, cutoffs, top = self.chain, self.cutoffs, 0
        else:  # a single trained level
            chain, cutoffs, top = None, (), self.levels[0]
            if top:
                overrides = {'eps': self.cutoffs[top - 1], **overrides}
        cfg = SamplerConfig.from_config(self.config.sampling, **overrides)
        sample, nfe = make_sampler(self.sde, cfg, lambda params: [self.score_fn(params, k) for k in self.levels],
                                   chain, stats, cutoffs, self.level_shape(top), sharding)
        if not top:
            return sample, nfe
        up = jax.jit(lambda x: self.chain.up(x, top))
        return (lambda params, key, n: up(sample(params, key, n))), nfe * self.chain.dim(top) / self.chain.dim(0)
