"""The score networks of a run's levels: which module serves each level, under which parameter key, and its score.

Parameters are a dict keyed by model: 'level_k' for the level-k network (the paper's separate models),
or one 'shared' entry used at every level's resolution. Image levels get NCSN++ / DDPM++, vector (PCA)
levels the MLP. A level's score follows score-SDE's conventions (`models/score.py`) and, under
`subspace.scale_after_pooling`, feeds the network the reference's input offset.
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from subspace_diffusion.core.sde import SDE, bcast
from subspace_diffusion.core.subspaces import PoolingChain
from subspace_diffusion.models.mlp import MLPScore
from subspace_diffusion.models.ncsnpp import NCSNpp
from subspace_diffusion.models.score import get_score_fn
from subspace_diffusion.run.data import data_offset


@dataclasses.dataclass(frozen=True, eq=False)
class Networks:
    """Level networks: modules, the per-example shape of each held level, the shared switch and input offsets."""

    image_model: NCSNpp
    vector_model: MLPScore
    sde: SDE
    shapes: dict  # {level k: per-example shape of level-k coordinates}, the levels that have parameters
    shared: bool = False
    offsets: dict = dataclasses.field(default_factory=dict)  # {level k: constant added before the network}

    @classmethod
    def build(cls, settings, shapes: dict, shared: bool = False) -> 'Networks':
        """The networks of `settings` for levels {k: shape} (one shared network when `shared`)."""
        image, vector = NCSNpp(net=settings.network), MLPScore(net=settings.vector_network)
        networks = cls(image, vector, settings.sde, dict(sorted(shapes.items())), shared,
                       {k: v for k, v in ((k, _input_offset(settings, k)) for k in shapes) if v is not None})
        if not networks.shapes:
            raise ValueError('no level to build a network for')
        if shared and len({networks.model_of(k) is image for k in networks.levels}) > 1:
            raise ValueError('one shared network cannot serve both image and vector (PCA) levels: set '
                             'config.subspace.shared_params=False')
        return networks

    @property
    def levels(self) -> tuple:
        """The levels with parameters, ascending."""
        return tuple(self.shapes)

    def model_of(self, k: int):
        """The network module of level k: NCSN++ for image coordinates, the MLP for vectors."""
        return self.image_model if len(self.shapes[k]) == 3 else self.vector_model

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
                x = jnp.zeros((1,) + tuple(self.shapes[k]), jnp.float32)
                variables = self.model_of(k).init({'params': jax.random.fold_in(key, k), 'dropout': key}, x,
                                                  jnp.ones((1,)), train=False)
                params[name] = variables['params']
        return params

    @property
    def num_classes(self) -> int:
        """Classes of class-conditional networks (their labels 0..num_classes - 1; num_classes = no label), or 0."""
        return self.image_model.net.num_classes

    def score(self, params: dict, k: int, train: bool = False, dropout_rng=None):
        """Level-k score callable s_k(x (B, *shapes[k]), t (B,)[, y (B,) class labels of a class-conditional
        network; left out: no label]); params {name: params}."""
        score = get_score_fn(self.model_of(k), self.sde, params[self.param_key(k)], train=train,
                             dropout_rng=dropout_rng)
        offset = self.offsets.get(k)
        if offset is None:
            return score
        # The network was trained on scaler(U_k^T u) = U_k^T x + offset: feed it x + alpha(t) offset.
        return lambda x, t, y=None: score(x + bcast(self.sde.alpha(t), x) * offset, t, y)

    def scores(self, params: dict) -> list:
        """[s_k for each held level, ascending]: what the samplers take."""
        return [self.score(params, k) for k in self.levels]

    def by_level(self, params: dict) -> dict:
        """{level: params} of a parameter dict of these networks."""
        return {k: params[self.param_key(k)] for k in self.levels}

    def named(self, by_level: dict) -> dict:
        """{name: params} from {level: params} (inverse of `by_level`)."""
        return {self.param_key(k): v for k, v in sorted(by_level.items())}


def _input_offset(settings, k: int) -> Optional[jnp.ndarray]:
    """Constant added to level-k coordinates before the network under subspace.scale_after_pooling, or None.

    The reference pools [0,1] images and then applies the data scaler, so its level-k network sees
    scaler(D^k u) = D^k x + b (1 - D^k 1) for scaler(u) = a u + b, not D^k x: for centred data and
    pooling by 2 that is +1 at 16x16 and +3 at 8x8 of CIFAR-10 (models/subspace_model.py there).
    """
    shift = data_offset(settings.data.centered)
    sub = settings.subspace
    if not k or not sub.scale_after_pooling or not shift:
        return None
    ones = jnp.ones((1,) + settings.data.shape, jnp.float32)
    return shift * (1.0 - PoolingChain(settings.data.shape, sub.levels, sub.factor).down(ones, k)[0])
