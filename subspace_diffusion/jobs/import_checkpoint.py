"""main.py --mode=import: a published score_sde_pytorch / subspace-diffusion checkpoint as level k of a workdir.

The file is read and checked against the config's level-k network by run/published.py; its weights are
written as a train-state checkpoint of the workdir, so eval, cutoffs, inpaint and colorize load them like
trained levels; the settings are recorded with it (config_import.json, run/records.py). Importing into a
workdir that already holds levels adds this one to them: a new checkpoint at a later step, the previous one
kept. The reference's Adam moments and update count come along when its optimiser is the config's (the same
betas and eps), so fine-tuning an import continues its optimiser; the levels already in the workdir keep theirs.
"""
import math
import os
import time

import numpy as np
from absl import logging

from subspace_diffusion.models import convert
from subspace_diffusion.run import loading, records
from subspace_diffusion.run.checkpoints import ARCHIVE, Checkpoints
from subspace_diffusion.run.experiment import level_shapes
from subspace_diffusion.run.networks import Networks
from subspace_diffusion.run.published import (AdamMoments, IncompatibleCheckpoint, check_noise_scales,
                                              layout_for_level, read_adam, read_reference, to_params)
from subspace_diffusion.run.settings import Optim, Settings
from subspace_diffusion.run.train_state import TrainState, checkpoint_meta, make_optimizer, with_adam_moments


def check_arguments(settings: Settings, source: str, level: int):
    """Raise one ValueError unless a checkpoint file and a level of the config's chain are named."""
    if not source:
        raise ValueError('--mode=import needs --import_from: the score_sde_pytorch / subspace-diffusion '
                         'checkpoint_N.pth to import')
    if level is None:
        raise ValueError('--mode=import needs --import_level: 0 for a full-space network, k for a level-k one')
    K = settings.subspace.levels
    if not 0 <= level <= K:
        raise ValueError(f'--import_level={level} is not a level of the config\'s {K}-level chain: use 0..{K} '
                         f'(or set --config.subspace.levels)')
    if settings.network.num_classes:
        raise ValueError(f'config.model.num_classes={settings.network.num_classes}: the published score-SDE and '
                         f'subspace-diffusion networks are unconditional; import them with model.num_classes=0')


def import_checkpoint(settings: Settings, workdir, source: str, level: int, weights: str = 'ema',
                      dry_run: bool = False):
    """Write the checkpoint at `source` as level `level` of `workdir` (or, dry run, print the mapping) -> step."""
    t0 = time.perf_counter()
    check_arguments(settings, source, level)
    chosen, state_dict, ref_step, decay = read_reference(source, weights)
    probe = Networks.build(settings, dict(enumerate(level_shapes(settings))))
    layout = layout_for_level(state_dict, probe, level)
    check_noise_scales(state_dict, probe)
    moments, not_carried = read_adam(source, state_dict)
    not_carried = not_carried or _other_adam(moments, settings.optim)
    n_params = sum(math.prod(shape) for _, shape in layout.values())
    logging.info('read %s (step %d, %s weights%s) in %.1fs: the level-%d network (%s), %s parameters', source,
                 ref_step, weights, f', EMA decay {decay:g}' if weights == 'ema' and decay else '',
                 time.perf_counter() - t0, level, 'x'.join(map(str, probe.shapes[level])), f'{n_params:,}')
    logging.info('optimiser: %s', f'starts fresh ({not_carried})' if not_carried else
                 f'its Adam moments after {moments.count} updates are carried over')
    if dry_run:
        for key, (path, shape) in layout.items():
            print(f'module.{key} {list(shape)} -> level_{level}/{"/".join(path)} '
                  f'{list(convert.from_torch(path, np.empty(shape, np.float32)).shape)}')
        print(f'{len(layout)} tensors, {n_params:,} parameters; buffers not imported: '
              f'{[b for b in convert.BUFFERS if b in state_dict]}')
        return None
    raw, ema = to_params(state_dict, layout), to_params(chosen, layout)
    adam = None if not_carried else (moments.count, to_params(moments.mu, layout), to_params(moments.nu, layout))
    del chosen, state_dict, moments  # the reference-layout copies are not needed while writing
    return _write(settings, workdir, level, (raw, ema), {'file': os.path.abspath(source), 'step': ref_step,
                                                        'weights': weights}, adam)


def _other_adam(moments: AdamMoments, optim: Optim) -> str:
    """Why the reference's Adam moments do not fit the config's optimiser ('' when they do)."""
    ours = (optim.beta1, 0.999)  # make_optimizer keeps optax's beta2
    if moments is None or (np.allclose(moments.betas, ours) and np.isclose(moments.eps, optim.eps)):
        return ''
    return (f'its Adam had betas {moments.betas} and eps {moments.eps:g}, the config betas {ours} and eps '
            f'{optim.eps:g}: set --config.optim.beta1 and --config.optim.eps to carry its moments')


def _write(settings: Settings, workdir, level: int, raw_and_ema, source: dict, adam=None) -> int:
    """Add level `level` (raw weights as params, chosen weights as EMA, `adam` = (count, mu, nu) or None for
    fresh moments) to the workdir's newest checkpoint; the levels in it keep their optimiser state."""
    ckpts = Checkpoints(workdir, record=records.Record.of(settings, 'import'))
    try:
        latest = ckpts.latest_step()
        raws, emas, sources, kept = {}, {}, {}, {}
        if latest is not None:
            old, parts, _ = loading.load_parts(settings, workdir, latest, parts=('params', 'ema_params'))
            if old.shared:
                raise IncompatibleCheckpoint(f'{workdir} holds one network shared by every level: import into a '
                                             f'fresh --workdir')
            raws, emas = parts['params'], parts['ema_params']
            sources = dict(ckpts.read_meta(latest).get('sources', {}))
            kept = {k: m for k, m in loading.load_adam_moments(settings, workdir, latest, old).items() if k != level}
        raws[level], emas[level] = raw_and_ema
        sources[str(level)] = source
        shapes = level_shapes(settings)
        networks = Networks.build(settings, {k: shapes[k] for k in raws})
        params, ema_params = networks.named(raws), networks.named(emas)
        tx = make_optimizer(settings.optim, networks.param_keys)
        step = source['step'] if latest is None else max(source['step'], latest + 1)
        opt_state = tx.init(params)
        for k, moments in {**kept, **({level: adam} if adam else {})}.items():
            opt_state = with_adam_moments(opt_state, networks.param_key(k), *moments)
        state = TrainState(step=np.asarray(step, np.int32), params=params, ema_params=ema_params,
                           opt_state=opt_state)
        ckpts.save(step, state, {**checkpoint_meta(networks), 'sources': sources}, ARCHIVE)
        ckpts.wait()
    finally:
        ckpts.close()
    logging.info('wrote level %d to %s at step %d (the workdir now holds levels %s)', level, ckpts.root, step,
                 list(networks.levels))
    return step
