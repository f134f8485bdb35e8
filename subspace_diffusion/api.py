"""A Python API for notebooks: load a workdir (trained or imported), sample, score, measure bits/dim, project.

    import subspace_diffusion as sd
    model = sd.load('runs/quick')                                   # settings recorded in the workdir
    images = model.sample(16, method='dpm_solver++', nfe=20, seed=0)  # (16, H, W, C) in [0, 1]
    shoes = model.sample(16, labels=7, guidance=2.0)                 # a class-conditional model: class 7, w = 2
    bpd = model.bits_per_dim(images)                                # (16,) bits/dim, 8-bit scale

Everything goes through the same settings, loading and sampler factory as main.py: the settings the loaded
checkpoint was made with (the record it names, run/records.py: config_train.json, or config_import.json for
imported networks) are checked as a config file is, the EMA parameters alone are read, and the samplers are
the factory's, compiled once per method and budget and kept in main.py's persistent compilation cache, so a
later session loads them instead. Every argument is checked at the boundary (api_inputs.py): a bad one is one
ValueError naming it, what it got and what it takes; a sampling budget far beyond any useful one is refused with
the time it would take. Arrays come back as numpy arrays.
"""
import dataclasses
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion import api_inputs as check
from subspace_diffusion import compiler
from subspace_diffusion.core.likelihood import require_finished
from subspace_diffusion.core.sampling import Sampler, least_nfe, make_sampler
from subspace_diffusion.evaluation.bpd import BPD_STREAM, bpd_function
from subspace_diffusion.formats.images import save_image_grid
from subspace_diffusion.run import compilation, data, loading, parallel, records, statistics
from subspace_diffusion.run.checkpoints import SettingsMismatch
from subspace_diffusion.run.experiment import Experiment, level_shapes
from subspace_diffusion.run.progress import fmt_duration
from subspace_diffusion.run.settings import Settings


def _config_of(workdir: str, config, step: Optional[int], meta: dict):
    """The ml_collections config: `config` if given, else the record the checkpoint (at `step`, with `meta`; None
    and {}: the workdir holds no checkpoint) names, else the first of records.LEGACY the workdir holds."""
    if config is not None:
        return check.config(config)
    name = records.find(workdir, meta)
    if name is not None:
        return records.as_config(records.read(workdir, name, step))
    raise check.refuse('workdir', workdir, 'holds no record of the settings its checkpoints were made with: pass '
                       'config= (the config file they were made with)' if step is not None else
                       'holds no checkpoint: train (main.py --mode=train) or import (--mode=import) into it first, '
                       'or pass the workdir of such a run')


def load(workdir, config=None, levels: Optional[Sequence[int]] = None, step: Optional[int] = None,
         compile_cache=None) -> 'Model':
    """The model in `workdir`: every level 0..K of the chain when the checkpoint holds them all, the one
    subspace level it holds alone, else full space.

    config: a config file (.py), a settings record (.json) or ConfigDict (default: the settings the checkpoint
    was made with); levels: which networks to sample with ((0,) = full space); step: a checkpoint step
    (default: the newest); compile_cache: the persistent compilation cache, as main.py's --compile_cache (default
    its default, $XDG_CACHE_HOME/subspace_diffusion/jax; '' runs without it).
    """
    workdir, asked = check.workdir(workdir), check.step(step)
    cache = check.cache_dir(compile_cache)
    compilation.enable(compilation.default_dir() if cache is None else cache, 'compile_cache')
    step, meta = loading.checkpoint_at(workdir, asked)  # one step for the settings, the levels and the params
    settings = Settings.from_config(_config_of(workdir, config, step, meta))
    K = settings.subspace.levels
    levels = check.levels(levels, K)
    if levels is None:
        held = set(meta.get('levels', ()))
        levels = tuple(range(K + 1)) if K and set(range(K + 1)) <= held else \
            tuple(held) if len(held) == 1 and 0 not in held else (0,)
    try:
        # Levels kept in other workdirs (eval.level_workdirs) are read at their own newest unless a step was asked.
        loaded = loading.load_levels(settings, levels, workdir, asked if settings.eval.level_workdirs else step)
    except FileNotFoundError as e:  # a workdir with a record but no checkpoint (a run that failed before saving)
        raise check.refuse('workdir', workdir, str(e)) from None
    except SettingsMismatch as e:  # only a config= of another run can disagree with the checkpoint
        raise check.refuse('config', config, f'the checkpoint at step {step} in {workdir} was made with other '
                           f'settings ({"; ".join(e.mismatch)}): takes the config it was made with, or leave '
                           f'config= out to read its record') from None
    exp = Experiment.build(settings, levels)
    stats = statistics.load(settings, exp.chain, workdir, write=parallel.is_main_process()) \
        if exp.levels != (0,) else None
    return Model(exp, exp.networks.named(loaded.params), stats, loaded.sources[min(levels)]['step'])


def save_grid(images, path) -> str:
    """Write images (N, H, W, C), [0, 1] floats (what Model.sample returns) or uint8, as one grid in the format of
    the path's extension (.png; Pillow's other formats, .jpg lossy) -> path."""
    path = check.image_path(path)
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or not len(x):
        raise check.refuse('images', x, 'takes a batch of images (N, H, W, C) with C 1 or 3')
    save_image_grid(check.images(x, x.shape[1:]), path)
    return path


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
                steps: Optional[int] = None, guidance: float = 0.) -> Sampler:
        """The compiled sampler (and its cost) of `method` (default: the settings'), effective-NFE budget `nfe`
        for the fixed-step ODE solvers (at least their minimum on this model), or `steps` grid points for PC;
        `guidance`: the classifier-free guidance w of a class-conditional model's labelled samples."""
        cfg = self.settings.sampling
        cfg = dataclasses.replace(cfg, method=cfg.method if method is None else check.method(method), guidance=0.)
        check.budget_applies(cfg.method, nfe, steps)
        if nfe is not None:
            floor = least_nfe(self.experiment.diffusion(self.stats), cfg, self.experiment.sampled_level)
            cfg = dataclasses.replace(cfg, ode=dataclasses.replace(
                cfg.ode, nfe_budget=check.nfe_budget(nfe, floor, cfg.method)))
        cfg = dataclasses.replace(cfg, guidance=guidance)  # after the budget's floor, which counts network steps
        if steps is not None:
            cfg = dataclasses.replace(cfg, pc=dataclasses.replace(cfg.pc, num_steps=check.whole('steps', steps, 2)))
            try:
                return self._build(cfg)
            except ValueError as e:  # a grid too coarse to reach every stage of the chain
                raise check.refuse('steps', steps, str(e)) from None
        return self._build(cfg)

    def _build(self, cfg) -> Sampler:
        """The factory's sampler of `cfg`, built once."""
        if cfg not in self._samplers:
            self._samplers[cfg] = make_sampler(self.experiment.diffusion(self.stats), cfg,
                                               self.experiment.networks.scores, level=self.experiment.sampled_level,
                                               num_classes=self.num_classes)
        return self._samplers[cfg]

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional model (labels 0..num_classes - 1), 0 for an unconditional one."""
        return self.experiment.networks.num_classes

    def sample(self, n: int, method: Optional[str] = None, nfe: Optional[float] = None, steps: Optional[int] = None,
               seed: int = 0, labels=None, guidance: Optional[float] = None) -> np.ndarray:
        """n samples as float32 (n, H, W, C) images in [0, 1] (see `sampler` for method, nfe and steps); a
        class-conditional model's of `labels` (one class, or n classes) under classifier-free guidance `guidance`
        (w >= 0, default the settings' sampling.guidance), or without labels its unconditional samples."""
        n, key = check.whole('n', n), jax.random.PRNGKey(check.seed(seed))
        labels = check.class_labels(labels, n, self.num_classes)
        w = check.guidance(guidance, self.num_classes, labels is not None)
        w = (self.settings.sampling.guidance if w is None else w) if labels is not None else 0.
        sampler = self.sampler(method, nfe, steps, w)
        cost = sampler.cost.effective_nfe
        if cost is not None and cost > check.USEFUL_NFE:  # one compiled call, which reports no progress
            self._refuse_budget(sampler, n, nfe, steps)
        x, _ = sampler.sample(self.params, key, n, labels)
        return np.clip(np.asarray(data.get_inverse_scaler(self.settings.data.centered)(x)), 0., 1.)

    def _refuse_budget(self, sampler: Sampler, n: int, nfe, steps):
        """The ValueError of a budget far beyond any useful one, with the time n samples would take here (one
        full-space network call timed on n samples, times the sampler's effective NFE)."""
        cost, cfg = sampler.cost.effective_nfe, self.settings.sampling
        name, value = ('nfe', nfe) if nfe is not None else ('steps', steps) if steps is not None else \
            ('sampling.num_steps', cfg.pc.num_steps) if cfg.method == 'pc' else \
            ('sampling.nfe_budget', cfg.ode.nfe_budget)
        call = compiler.jit(self.experiment.networks.score(self.params, self.experiment.sampled_level))
        x = jnp.zeros((n,) + level_shapes(self.settings)[self.experiment.sampled_level], jnp.float32)
        t = jnp.full((n,), 0.5 * self.settings.sde.T, jnp.float32)
        jax.block_until_ready(call(x, t))  # compiled
        start = time.perf_counter()
        jax.block_until_ready(call(x, t))
        seconds = (time.perf_counter() - start) / (self.experiment.diffusion(self.stats).cost(
            self.experiment.sampled_level) if self.experiment.sampled_level else 1.)
        limit = int(value * check.USEFUL_NFE / cost) if name in ('steps', 'sampling.num_steps') else check.USEFUL_NFE
        raise check.refuse(name, value, f'{cost:,.0f} effective NFE per sample would take about '
                           f'{fmt_duration(cost * seconds)} for {n} sample(s) here ({seconds * 1e3:.3g} ms per '
                           f'full-space network call), in one call that reports no progress: far beyond any useful '
                           f'budget (the published PC samplers spend 2,000, the ODE solvers converge by about 100): '
                           f'takes {name} <= {limit:,}')

    def score(self, x, t: float) -> np.ndarray:
        """The implicit full-space score s(x, t) (SPEC section 3) of model-space x (B, H, W, C) at one time t, as
        float32 (B, H, W, C)."""
        x = jnp.asarray(check.array('x', x, self.settings.data.shape, 'model-space arrays'))
        t = check.time(t, self.settings.sde.T)
        diffusion = self.experiment.diffusion(self.stats)
        networks = self.experiment.networks
        vt = jnp.full((x.shape[0],), t, jnp.float32)
        if diffusion.subspace is None:
            return np.asarray(networks.score(self.params, 0)(x, vt))
        k = int(diffusion.subspace.level_of(t))
        if k not in self.experiment.levels:  # a model of one subspace level serves its own time range only
            bounds = (0.,) + diffusion.cutoffs + (self.settings.sde.T,)
            held = self.experiment.levels[0]
            raise check.refuse('t', t, f'lies at level {k} of the chain, whose network this model does not hold '
                               f'(levels {list(self.experiment.levels)}): takes t in ({bounds[held]:g}, '
                               f'{bounds[held + 1]:g}], or load level {k} too (sd.load(workdir, levels=...))')
        implicit = diffusion.subspace.implicit_score(self.settings.sde, networks.score(self.params, k), k)
        return np.asarray(implicit(x, vt))

    def bits_per_dim(self, images, seed: int = 0) -> np.ndarray:
        """Bits/dim (8-bit scale, one dequantisation draw) of images (N, H, W, C) by the probability-flow ODE:
        float images in [0, 1] (what `sample` returns) or uint8 images (what a PNG holds, divided by 255)."""
        images, seed = check.images(images, self.settings.data.shape), check.seed(seed)
        if self.experiment.sampled_level:
            raise check.refuse('levels', self.experiment.levels, 'bits/dim integrates over the whole time range: '
                               'load the whole chain or full space (levels=(0,))')
        batch = min(self.settings.eval.batch_size, len(images))
        fn = bpd_function(self.settings, self.experiment.diffusion(self.stats), self.experiment.networks.scores)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), BPD_STREAM)
        out = []
        for i in range(0, len(images), batch):
            bpd, stats = fn(self.params, jax.random.fold_in(key, i), parallel.pad_rows(images[i:i + batch], batch))
            require_finished(stats, self.settings.eval.tolerance, 'likelihood ODE', self.settings.sde.T)
            out.append(np.asarray(bpd)[:len(images[i:i + batch])])
        return np.concatenate(out)

    def to_model_space(self, images) -> np.ndarray:
        """Images (N, H, W, C) (as `bits_per_dim` takes them) -> float32 (N, H, W, C) in the model's data space ([-1, 1]
        when the data are centred)."""
        return np.asarray(data.get_scaler(self.settings.data.centered)(
            check.images(images, self.settings.data.shape)), np.float32)

    def project(self, x, k: int) -> np.ndarray:
        """U_k^T x: full-space arrays (B, H, W, C) -> level-k coordinates (B, h, w, C) (an image at H / factor^k for
        pooling)."""
        k = check.level('k', k, self.experiment.num_levels)
        x = jnp.asarray(check.array('x', x, self.settings.data.shape, 'full-space arrays'))
        return np.asarray(self.experiment.chain.down(x, k) if k else x)

    def embed(self, y, k: int) -> np.ndarray:
        """U_k y: level-k coordinates (B, h, w, C) -> full space (B, H, W, C); embed(project(x, k), k) is the
        projection P_k x."""
        k = check.level('k', k, self.experiment.num_levels)
        y = jnp.asarray(check.array('y', y, level_shapes(self.settings)[k], f'level-{k} coordinates'))
        return np.asarray(self.experiment.chain.up(y, k) if k else y)

    def effective_nfe(self, method: Optional[str] = None, nfe: Optional[float] = None,
                      steps: Optional[int] = None) -> Optional[float]:
        """Effective NFE per sample (sum of n_level / d per network call) of that sampler; None for adaptive 'ode'."""
        return self.sampler(method, nfe, steps).cost.effective_nfe
