"""main.py --mode=import: a score_sde_pytorch / subspace-diffusion checkpoint as level k of a workdir.

The file (`checkpoint_N.pth`: {'model', 'ema', 'optimizer', 'step'}) is read without torch and without
running its pickle (pth.py). It is checked against the network the config builds at level k: every
key and shape (naming the level it fits instead, when it is another level's network) and, for VE,
the noise scales of its `sigmas` buffer. Its EMA weights (`ema.shadow_params`, positional over the
trainable parameters in state_dict order; the Fourier `W` and `sigmas` come from 'model') or its raw
weights become our parameters by name (models/convert.py). They are written as a train-state
checkpoint of the workdir, so eval, cutoffs, inpaint and colorize load them like trained levels.
Importing into a workdir that already holds levels adds this one to them: a new checkpoint at a later
step, the previous one kept. The optimiser state starts fresh (the reference's Adam moments are not
carried over).
"""
import math
import os
import time

import jax
import numpy as np
from absl import logging
from flax import traverse_util

from subspace_diffusion import loading, pth
from subspace_diffusion.checkpoints import ARCHIVE, Checkpoints
from subspace_diffusion.experiment import Experiment
from subspace_diffusion.models import convert
from subspace_diffusion.settings import Settings
from subspace_diffusion.train_state import TrainState, checkpoint_meta, make_optimizer

WEIGHTS = ('ema', 'model')


class IncompatibleCheckpoint(ValueError):
    """The checkpoint does not fit the config's level-k network (the message names the field to change)."""


def read_reference(path, weights: str = 'ema'):
    """({torch key without 'module.': array} of the chosen weights, the full model state_dict, step, EMA decay)."""
    if weights not in WEIGHTS:
        raise ValueError(f'import weights must be one of {WEIGHTS}, got {weights!r}')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: --import_from={path!r}')
    ckpt = pth.load(path, keys=('model', 'ema', 'step'))
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        raise IncompatibleCheckpoint(f'{path} is a torch file but not a score_sde_pytorch checkpoint (no "model" state_dict)')
    state_dict = convert.strip_prefix(ckpt['model'])
    ema = ckpt.get('ema') or {}
    if weights == 'model':
        chosen = dict(state_dict)
    else:
        shadow = ema.get('shadow_params')
        if shadow is None:
            raise IncompatibleCheckpoint(f'{path} has no EMA weights (ema.shadow_params): import the raw weights with '
                               f'--import_weights=model')
        trainable = [k for k in state_dict if k not in convert.BUFFERS and k != convert.FOURIER_KEY]
        if len(shadow) != len(trainable) or any(np.shape(v) != np.shape(state_dict[k])
                                                for k, v in zip(trainable, shadow)):
            raise IncompatibleCheckpoint(f'{path}: its {len(shadow)} EMA tensors do not line up with the {len(trainable)} '
                               f'trainable parameters of its state_dict; import the raw weights with '
                               f'--import_weights=model')
        chosen = {**state_dict, **dict(zip(trainable, shadow))}
    step = int(np.asarray(ckpt.get('step', 0)))
    return chosen, state_dict, step, ema.get('decay')


def network_layout(exp: Experiment, k: int) -> dict:
    """{torch key: (our path, torch shape)} of the config's level-k network (shapes only, nothing allocated)."""
    shape = exp.level_shape(k)
    variables = jax.eval_shape(lambda key: exp.model.init({'params': key, 'dropout': key},
                                                          jax.numpy.zeros((1,) + shape), jax.numpy.ones((1,)),
                                                          train=False), jax.random.PRNGKey(0))
    return convert.torch_layout(variables['params'])


def _fits(state_dict, layout) -> bool:
    keys = set(state_dict) - set(convert.BUFFERS)
    return keys == set(layout) and all(tuple(np.shape(state_dict[k])) == layout[k][1] for k in layout)


def _mismatch(state_dict, layout, exp: Experiment, k: int) -> str:
    """The first difference between a checkpoint and the level-k network, with the config fields to check."""
    shape = 'x'.join(map(str, exp.level_shape(k)))
    keys = set(state_dict) - set(convert.BUFFERS)
    if (convert.FOURIER_KEY in keys) != (convert.FOURIER_KEY in layout):
        found, want = (('Fourier', 'positional') if convert.FOURIER_KEY in keys else ('positional', 'Fourier'))
        return (f'the checkpoint uses the {found} time embedding, the config the {want} one: use the config it '
                f'was trained with (NCSN++ / VE: Fourier; DDPM++ / VP, sub-VP: positional)')
    for key in layout:
        if key in state_dict and tuple(np.shape(state_dict[key])) != layout[key][1]:
            return (f'{key} has shape {tuple(np.shape(state_dict[key]))} in the checkpoint but '
                    f'{layout[key][1]} in the config\'s level-{k} network ({shape}): the checkpoint was '
                    f'trained with other model settings; {_width_hint(state_dict, exp)}')
    missing, extra = sorted(set(layout) - keys), sorted(keys - set(layout))
    return (f'the checkpoint has {len(keys)} tensors, the config\'s level-{k} network ({shape}) has {len(layout)}'
            + (f'; absent from the checkpoint: {missing[0]} {layout[missing[0]][1]}' if missing else '')
            + (f'; not in the network: {extra[0]} {tuple(np.shape(state_dict[extra[0]]))}' if extra else '')
            + ': use the config the checkpoint was trained with, or match config.model.num_res_blocks, ch_mult, '
              'attn_resolutions, attention_placement, resblock_type and progressive* to it')


def _width_hint(state_dict, exp: Experiment) -> str:
    """'set --config.model.nf=N' when the first convolution tells the checkpoint's width, else a field list."""
    convs = [k for k in state_dict if k.endswith('.weight') and np.ndim(state_dict[k]) == 4]
    first = min(convs, key=lambda k: int(k.split('.')[1])) if convs else None
    if first is not None:
        nf, channels = np.shape(state_dict[first])[:2]
        if nf != exp.network.nf:
            return f'it has nf={nf}: set --config.model.nf={nf}'
        if channels != exp.level_shape(0)[-1]:
            return f'it takes {channels} channels: set --config.data.num_channels={channels}'
    return 'check config.model.nf, ch_mult, num_res_blocks and data.num_channels'


def _check_level(state_dict, exp: Experiment, level: int) -> dict:
    """The level-`level` layout if the checkpoint fits it; otherwise a one-line error naming the level it fits."""
    layout = network_layout(exp, level)
    if _fits(state_dict, layout):
        return layout
    for k in range(exp.num_levels + 1):
        if k != level and _fits(state_dict, network_layout(exp, k)):
            raise IncompatibleCheckpoint(f'the checkpoint is the level-{k} network ({"x".join(map(str, exp.level_shape(k)))} '
                               f'input), not level {level} ({"x".join(map(str, exp.level_shape(level)))}): '
                               f'import it with --import_level={k}')
    raise IncompatibleCheckpoint(_mismatch(state_dict, layout, exp, level))


def _check_noise_scales(state_dict, exp: Experiment):
    """VE: the reference's sigmas buffer runs from sigma_max to sigma_min; they must be the config's."""
    sigmas = state_dict.get('sigmas')
    if exp.sde.kind != 've' or sigmas is None or np.size(sigmas) < 2:
        return
    for name, found, want in (('sigma_max', float(sigmas[0]), exp.sde.sigma_max),
                              ('sigma_min', float(sigmas[-1]), exp.sde.sigma_min)):
        if not math.isclose(found, want, rel_tol=1e-4):
            raise IncompatibleCheckpoint(f'the checkpoint was trained with {name}={found:g}, the config has '
                               f'sde.{name}={want:g}: set --config.sde.{name}={found:g} (or use the config the '
                               f'checkpoint was trained with)')


def to_params(weights: dict, layout: dict) -> dict:
    """Our parameter tree from {torch key: array} through the layout of `network_layout`."""
    return traverse_util.unflatten_dict({path: convert.from_torch(path, weights[key]).astype(np.float32)
                                         for key, (path, _) in layout.items()})


def network_params(exp: Experiment, path, level: int, weights: str = 'ema') -> dict:
    """Parameters of the reference checkpoint at `path` for the experiment's level-`level` network (checked)."""
    chosen, state_dict, _, _ = read_reference(path, weights)
    return to_params(chosen, _check_level(state_dict, exp, level))


def import_mode(settings: Settings, workdir, source: str, level: int, weights: str = 'ema', dry_run: bool = False):
    """Write the checkpoint at `source` as level `level` of `workdir` (or, dry run, print the mapping) -> step."""
    t0 = time.perf_counter()
    if level is None:
        raise ValueError('--mode=import needs --import_level: 0 for a full-space network, k for a level-k one')
    chosen, state_dict, ref_step, decay = read_reference(source, weights)
    K = settings.subspace.levels
    if not 0 <= level <= K:
        raise ValueError(f'--import_level={level} is not a level of the config\'s {K}-level chain: use 0..{K} '
                         f'(or set --config.subspace.levels)')
    probe = Experiment(settings, levels=tuple(range(K + 1)))
    layout = _check_level(state_dict, probe, level)
    _check_noise_scales(state_dict, probe)
    n_params = sum(math.prod(shape) for _, shape in layout.values())
    logging.info('read %s (step %d, %s weights%s) in %.1fs: the level-%d network (%s), %s parameters', source,
                 ref_step, weights, f', EMA decay {decay:g}' if weights == 'ema' and decay else '',
                 time.perf_counter() - t0, level, 'x'.join(map(str, probe.level_shape(level))), f'{n_params:,}')
    if dry_run:
        for key, (path, shape) in layout.items():
            print(f'module.{key} {list(shape)} -> level_{level}/{"/".join(path)} '
                  f'{list(convert.from_torch(path, np.empty(shape, np.float32)).shape)}')
        print(f'{len(layout)} tensors, {n_params:,} parameters; buffers not imported: '
              f'{[b for b in convert.BUFFERS if b in state_dict]}')
        return None
    raw, ema = to_params(state_dict, layout), to_params(chosen, layout)
    del chosen, state_dict  # the reference-layout copies are not needed while writing
    return _write(settings, workdir, level, raw, ema, {'file': os.path.abspath(source), 'step': ref_step,
                                                     'weights': weights})


def _write(settings: Settings, workdir, level, raw, ema, source) -> int:
    """Add level `level` (raw weights as params, chosen weights as EMA) to the workdir's newest checkpoint."""
    ckpts = Checkpoints(workdir)
    try:
        latest = ckpts.latest_step()
        raws, emas, sources = {}, {}, {}
        if latest is not None:
            old_exp, old, _ = loading.load_state(settings, workdir, latest)
            if old_exp.shared:
                raise IncompatibleCheckpoint(f'{workdir} holds one network shared by every level: import into a '
                                             f'fresh --workdir')
            raws, emas = loading.by_level(old_exp, old.params), loading.by_level(old_exp, old.ema_params)
            sources = dict(ckpts.read_meta(latest).get('sources', {}))
        raws[level], emas[level] = raw, ema
        sources[str(level)] = source
        exp = Experiment(settings, levels=sorted(raws))
        params = {exp.param_key(k): v for k, v in raws.items()}
        ema_params = {exp.param_key(k): v for k, v in emas.items()}
        tx = make_optimizer(settings.optim, exp.param_keys)
        step = source['step'] if latest is None else max(source['step'], latest + 1)
        state = TrainState(step=np.asarray(step, np.int32), params=params, ema_params=ema_params,
                           opt_state=tx.init(params))
        ckpts.save(step, state, {**checkpoint_meta(exp), 'sources': sources}, ARCHIVE)
        ckpts.wait()
    finally:
        ckpts.close()
    logging.info('wrote level %d to %s at step %d (the workdir now holds levels %s)', level, ckpts.root, step,
                 list(exp.levels))
    return step
