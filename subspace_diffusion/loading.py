"""Trained or imported parameters of workdirs, by level: the one place that knows which parameter sets exist.

A checkpoint records its levels and whether one network is shared; eval, cutoffs, inpaint/colourise
and the training snapshot sampler all go through `by_level` / `load_levels` to get {level: params}.
"""
import dataclasses
import os
from typing import Optional, Sequence

from subspace_diffusion import parallel
from subspace_diffusion.checkpoints import Checkpoints
from subspace_diffusion.experiment import Experiment
from subspace_diffusion.settings import Settings
from subspace_diffusion.train_state import abstract_state, checkpoint_meta, make_optimizer


@dataclasses.dataclass
class Levels:
    """EMA parameters of some levels, as {'level_k': params} for `Experiment(settings, levels)`."""

    params: dict
    sources: dict  # {level: {'workdir', 'step'}}


def load_state(settings: Settings, workdir, step: Optional[int] = None, mesh=None):
    """(Experiment of the checkpoint's levels, its whole TrainState, step) at `step` (default latest)."""
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        step = ckpts.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'no checkpoint in {ckpts.root}: train first (main.py --mode=train), import '
                                    f'one (main.py --mode=import) or point at the right workdir')
        meta = ckpts.read_meta(step)
        exp = Experiment(settings, levels=meta['levels'], shared=meta['param_keys'] == ['shared'])
        tx = make_optimizer(settings.optim, exp.param_keys)
        state, _ = ckpts.restore(abstract_state(exp, tx, mesh or parallel.make_mesh()), checkpoint_meta(exp), step)
    finally:
        ckpts.close()
    return exp, state, step


def by_level(exp: Experiment, params: dict) -> dict:
    """{level: params} of a parameter dict of `exp` ('level_k' entries, or one 'shared' serving every level)."""
    return {k: params[exp.param_key(k)] for k in exp.levels}


def held_levels(workdir, step: Optional[int] = None) -> tuple:
    """The levels the workdir's checkpoint at `step` (default latest) holds; () without a checkpoint."""
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        step = ckpts.latest_step() if step is None else step
        return () if step is None else tuple(ckpts.read_meta(step)['levels'])
    finally:
        ckpts.close()


def load_levels(settings: Settings, levels: Sequence[int], workdirs, step: Optional[int] = None,
                mesh=None) -> Levels:
    """EMA parameters of `levels` for sampling, from workdirs[k] (index = level; one workdir for all if a str).

    The first workdir is read at `step` (default latest); levels from other workdirs (trained
    separately) at their latest checkpoint. A level no checkpoint holds is one error naming how to get it.
    """
    levels = tuple(levels)
    dirs = [workdirs] * (max(levels) + 1) if isinstance(workdirs, (str, os.PathLike)) else list(workdirs)
    dirs = [os.path.abspath(d) for d in dirs]
    loaded, params, sources = {}, {}, {}
    for k in levels:
        d = dirs[k]
        want = step if d == dirs[levels[0]] else None
        if (d, want) not in loaded:
            exp, state, got = load_state(settings, d, want, mesh)
            loaded[(d, want)] = (by_level(exp, state.ema_params), got)
        held, got = loaded[(d, want)]
        if k not in held:
            raise ValueError(f'the checkpoint at step {got} in {d} holds levels {sorted(held)}, not level {k}: '
                             f'train it (--config.subspace.train_level={k}, or -1 for every level), import it '
                             f'(--mode=import --import_level={k}), or name its workdir at index {k} of '
                             f'config.eval.level_workdirs')
        params[f'level_{k}'] = held[k]
        sources[k] = {'workdir': d, 'step': int(got)}
    return Levels(params, sources)
