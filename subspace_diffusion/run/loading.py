"""Trained or imported parameters of workdirs, by level: the one place that knows which parameter sets exist.

A checkpoint records its levels and whether one network is shared. Sampling jobs (eval, cutoffs,
inpaint / colourise, the Python API) get {level: EMA parameters} through `load_levels`, which reads only
the EMA entries of the checkpoint (an Orbax partial restore: the optimiser state is never loaded).
"""
import dataclasses
import os
from typing import Optional, Sequence

from subspace_diffusion.run import parallel
from subspace_diffusion.run.checkpoints import Checkpoints
from subspace_diffusion.run.experiment import level_shapes
from subspace_diffusion.run.networks import Networks
from subspace_diffusion.run.settings import Settings
from subspace_diffusion.run.train_state import (abstract_params, abstract_state, adam_moments, checkpoint_meta,
                                                make_optimizer)


@dataclasses.dataclass
class Levels:
    """EMA parameters by level ({k: params}) and where each came from ({k: {'workdir', 'step'}})."""

    params: dict
    sources: dict


def _no_checkpoint(root) -> FileNotFoundError:
    return FileNotFoundError(f'no checkpoint in {root}: train first (main.py --mode=train), import one '
                             f'(main.py --mode=import) or point at the right workdir')


def load_parts(settings: Settings, workdir, step: Optional[int] = None, parts=('ema_params',), mesh=None):
    """(networks of the checkpoint's levels, {part: {level: params}}, step) of `workdir` at `step` (default latest).

    parts: which parameter dicts of the train state to read ('ema_params', 'params'); nothing else is loaded.
    """
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        step = ckpts.latest_step() if step is None else step
        if step is None:
            raise _no_checkpoint(ckpts.root)
        meta = ckpts.read_meta(step)
        shapes = level_shapes(settings)
        if max(meta['levels']) >= len(shapes):
            raise ValueError(f'the checkpoint at step {step} in {workdir} holds levels {meta["levels"]}, the config\'s '
                             f'chain has levels 0..{len(shapes) - 1}: set config.subspace.levels as it was trained')
        networks = Networks.build(settings, {k: shapes[k] for k in meta['levels']},
                                  shared=meta['param_keys'] == ['shared'])
        abstract = abstract_params(networks, mesh or parallel.make_mesh())
        state, _ = ckpts.restore({part: abstract for part in parts}, checkpoint_meta(networks), step, partial=True)
    finally:
        ckpts.close()
    return networks, {part: networks.by_level(state[part]) for part in parts}, step


def load_adam_moments(settings: Settings, workdir, step: int, networks: Networks) -> dict:
    """{level: (update count, mu, nu)} of the Adam state in `workdir`'s checkpoint at `step` (levels: `networks`'s)."""
    abstract = abstract_state(networks, make_optimizer(settings.optim, networks.param_keys), parallel.make_mesh())
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        opt_state = ckpts.restore({'opt_state': abstract.opt_state}, checkpoint_meta(networks), step,
                                  partial=True)[0]['opt_state']
    finally:
        ckpts.close()
    return {k: adam_moments(opt_state, networks.param_key(k)) for k in networks.levels}


def checkpoint_at(workdir, step: Optional[int] = None) -> tuple:
    """(step, the meta of the workdir's checkpoint at `step`, default the newest): its levels, its settings record;
    (None, {}) without a checkpoint."""
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        step = ckpts.latest_step() if step is None else step
        return (None, {}) if step is None else (step, ckpts.read_meta(step))
    finally:
        ckpts.close()


def _holds(workdir, step: Optional[int]) -> bool:
    """Whether `workdir` holds a checkpoint of `step` (False for step None)."""
    if step is None:
        return False
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        return step in ckpts.archived_steps() or ckpts.latest_step() == step
    finally:
        ckpts.close()


def level_workdirs(settings: Settings, workdir, levels: Sequence[int]) -> list:
    """Workdir of each level 0..max(levels): eval.level_workdirs (index = level, '' = workdir), or `workdir` for all."""
    dirs = settings.eval.level_workdirs
    if not dirs:
        dirs = (workdir,) * (max(levels) + 1)
    elif len(dirs) <= max(levels):
        raise ValueError(f'config.eval.level_workdirs names {len(dirs)} workdir(s) but sampling needs levels '
                         f'{list(levels)}: give one workdir per level (index = level; "" = --workdir)')
    dirs = [os.path.abspath(d or workdir) for d in dirs]
    for k in levels:
        if not os.path.isdir(os.path.join(dirs[k], 'checkpoints')):
            raise FileNotFoundError(f'no checkpoints in {dirs[k]} (level {k}): train that level there first '
                                    f'(main.py --mode=train, subspace.train_level={k} or -1) or import it '
                                    f'(--mode=import), or fix --workdir / config.eval.level_workdirs')
    return dirs


def load_levels(settings: Settings, levels: Sequence[int], workdir, step: Optional[int] = None, mesh=None) -> Levels:
    """EMA parameters of `levels` for sampling, each from its workdir (`level_workdirs`), the optimiser left on disk.

    Level 0's workdir is read at `step` (default latest); levels from other workdirs (trained separately)
    at the same step where they archived it (a chain evaluated along its training), else at their latest
    checkpoint; `sources` says which. A level no checkpoint holds is one error naming how to get it.
    """
    levels = tuple(levels)
    dirs = level_workdirs(settings, workdir, levels)
    loaded, params, sources = {}, {}, {}
    for k in levels:
        d = dirs[k]
        want = step if d == dirs[levels[0]] or _holds(d, step) else None
        if (d, want) not in loaded:
            _, parts, got = load_parts(settings, d, want, mesh=mesh)
            loaded[(d, want)] = (parts['ema_params'], got)
        held, got = loaded[(d, want)]
        if k not in held:
            raise ValueError(f'the checkpoint at step {got} in {d} holds levels {sorted(held)}, not level {k}: '
                             f'train it (--config.subspace.train_level={k}, or -1 for every level), import it '
                             f'(--mode=import --import_level={k}), or name its workdir at index {k} of '
                             f'config.eval.level_workdirs')
        params[k] = held[k]
        sources[k] = {'workdir': d, 'step': int(got)}
    return Levels(params, sources)
