"""A Python API for notebooks: load a workdir (trained or imported), sample, score, measure bits/dim, project.

    import subspace_diffusion as sd
    model = sd.load('runs/quick')                                   # settings recorded in the workdir
    images = model.sample(16, method='dpm_solver++', nfe=20, seed=0)  # (16, H, W, C) in [0, 1]
    bpd = model.bits_per_dim(images)                                # (16,) bits/dim, 8-bit scale

Everything goes through the same settings, loading and sampler factory as main.py: a workdir's recorded
settings (config_train.json, or config_import.json for imported networks) are checked as a config file is,
the EMA parameters alone are read, and the samplers are the factory's, compiled once per method and budget.
"""
import dataclasses
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from subspace_diffusion.core.sampling import Sampler, make_sampler
from subspace_diffusion.evaluation.bpd import BPD_STREAM, bpd_function
from subspace_diffusion.formats.files import FileProblem, read_json
from subspace_diffusion.run import data, loading, parallel, statistics
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Settings

RECORDS = ('config_train.json', 'config_import.json', 'config_eval.json')  # where a workdir keeps its settings


def _config_of(workdir, config):
    """The ml_collections config: `config` (a ConfigDict or a path to a config file), else the workdir's record."""
    if isinstance(config, ml_collections.ConfigDict):
        return config
    if isinstance(config, (str, os.PathLike)):
        from ml_collections import config_flags
        return config_flags.config_flags._LoadConfigModule('config', os.fspath(config)).get_config()
    for name in RECORDS:
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            return ml_collections.ConfigDict(read_json(path, 'settings record', 'pass config= explicitly'))
    raise FileProblem(f'{workdir} holds no record of its settings ({", ".join(RECORDS)}): pass config= (a config '
                      f'file or ConfigDict)')


def load(workdir, config=None, levels: Optional[Sequence[int]] = None, step: Optional[int] = None) -> 'Model':
    """The model in `workdir`: every level 0..K of the chain when the checkpoint holds them all, else full space.

    config: a config file path or ConfigDict (default: the settings recorded in the workdir); levels: which
    networks to sample with ((0,) = full space); step: a checkpoint step (default: the latest).
    """
    settings = Settings.from_config(_config_of(workdir, config))
    K = settings.subspace.levels
    if levels is None:
        held = set(loading.held_levels(workdir, step))
        levels = tuple(range(K + 1)) if K and set(range(K + 1)) <= held else (0,)
    loaded = loading.load_levels(settings, levels, workdir, step)
    exp = Experiment.build(settings, levels)
    stats = statistics.load(settings, exp.chain, workdir, write=parallel.is_main_process()) \
        if exp.levels != (0,) else None
    return Model(exp, exp.networks.named(loaded.params), stats, loaded.sources[min(levels)]['step'])


@dataclasses.dataclass(eq=False)
class Model:
    """A loaded model: its settings and run object, EMA parameters, chain statistics and checkpoint step."""

    experiment: Experiment
    params: dict
    stats: Optional[object]
    step: int
    _samplers: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def settings(self) -> Settings:
        """The checked settings the model was loaded with."""
        return self.experiment.settings

    def describe(self) -> str:
        """Where the model samples: 'full space' or the chain with its cutoffs."""
        return self.experiment.describe()

    def sampler(self, method: Optional[str] = None, nfe: Optional[float] = None,
                steps: Optional[int] = None) -> Sampler:
        """The compiled sampler (and its cost) of `method` (default: the settings'), effective-NFE budget `nfe`
        for the fixed-step ODE solvers, or `steps` grid points for PC."""
        cfg = self.settings.sampling
        cfg = dataclasses.replace(cfg, method=method or cfg.method)
        if nfe is not None:
            cfg = dataclasses.replace(cfg, ode=dataclasses.replace(cfg.ode, nfe_budget=float(nfe)))
        if steps is not None:
            cfg = dataclasses.replace(cfg, pc=dataclasses.replace(cfg.pc, num_steps=int(steps)))
        if cfg not in self._samplers:
            self._samplers[cfg] = make_sampler(self.experiment.diffusion(self.stats), cfg,
                                               self.experiment.networks.scores, level=self.experiment.sampled_level)
        return self._samplers[cfg]

    def sample(self, n: int, method: Optional[str] = None, nfe: Optional[float] = None, steps: Optional[int] = None,
               seed: int = 0) -> np.ndarray:
        """n samples as float32 (n, H, W, C) images in [0, 1] (see `sampler` for method, nfe and steps)."""
        x, _ = self.sampler(method, nfe, steps).sample(self.params, jax.random.PRNGKey(seed), n)
        return np.clip(np.asarray(data.get_inverse_scaler(self.settings.data.centered)(x)), 0., 1.)

    def score(self, x, t: float):
        """The implicit full-space score s(x, t) (SPEC section 3) of model-space x (B, H, W, C) at one time t."""
        diffusion = self.experiment.diffusion(self.stats)
        networks = self.experiment.networks
        vt = jnp.full((x.shape[0],), t, jnp.float32)
        if diffusion.subspace is None:
            return networks.score(self.params, 0)(x, vt)
        k = int(diffusion.subspace.level_of(float(t)))
        return diffusion.subspace.implicit_score(self.settings.sde, networks.score(self.params, k), k)(x, vt)

    def bits_per_dim(self, images, seed: int = 0) -> np.ndarray:
        """Bits/dim (8-bit scale, one dequantisation draw) of [0, 1] images (N, H, W, C) by the probability-flow ODE."""
        images = np.asarray(images, np.float32)
        batch = min(self.settings.eval.batch_size, len(images))
        fn = bpd_function(self.settings, self.experiment.diffusion(self.stats), self.experiment.networks.scores)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), BPD_STREAM)
        out = [np.asarray(fn(self.params, jax.random.fold_in(key, i), parallel.pad_rows(images[i:i + batch], batch))[0])
               [:len(images[i:i + batch])] for i in range(0, len(images), batch)]
        return np.concatenate(out)

    def to_model_space(self, images):
        """[0, 1] images -> the model's data space ([-1, 1] when the data are centred)."""
        return data.get_scaler(self.settings.data.centered)(jnp.asarray(images, jnp.float32))

    def project(self, x, k: int):
        """U_k^T x: full-space arrays (B, H, W, C) -> level-k coordinates (an image at H / factor^k for pooling)."""
        return self.experiment.chain.down(x, k)

    def embed(self, y, k: int):
        """U_k y: level-k coordinates -> full space; embed(project(x, k), k) is the projection P_k x."""
        return self.experiment.chain.up(y, k)

    def effective_nfe(self, method: Optional[str] = None, nfe: Optional[float] = None,
                      steps: Optional[int] = None) -> Optional[float]:
        """Effective NFE per sample (sum of n_level / d per network call) of that sampler; None for adaptive 'ode'."""
        return self.sampler(method, nfe, steps).cost.effective_nfe
