"""Published score_sde_pytorch / subspace-diffusion checkpoints read as the parameters of a level network.

The file (`checkpoint_N.pth`: {'model', 'ema', 'optimizer', 'step'}) is read without torch and without
running its pickle (pth.py). It is checked against the network the config builds at level k: every
key and shape (naming the level it fits instead, when it is another level's network) and, for VE,
the noise scales of its `sigmas` buffer. Its EMA weights (`ema.shadow_params`, positional over the
trainable parameters in state_dict order; the Fourier `W` and `sigmas` come from 'model') or its raw
weights become our parameters by name (models/convert.py). `--mode=import` (jobs/import_checkpoint.py)
writes them into a workdir.
"""
import math
from typing import NamedTuple

import jax
import numpy as np
from flax import traverse_util

from subspace_diffusion.formats import pth
from subspace_diffusion.formats.files import check_file
from subspace_diffusion.models import convert
from subspace_diffusion.run.networks import Networks

WEIGHTS = ('ema', 'model')


class IncompatibleCheckpoint(ValueError):
    """The checkpoint does not fit the config's level-k network (the message names the field to change)."""


def read_reference(path, weights: str = 'ema'):
    """({torch key without 'module.': array} of the chosen weights, the full model state_dict, step, EMA decay)."""
    if weights not in WEIGHTS:
        raise ValueError(f'import weights must be one of {WEIGHTS}, got {weights!r}')
    check_file(path, 'checkpoint', 'give --import_from the checkpoint_<N>.pth file itself')
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


class AdamMoments(NamedTuple):
    """The reference optimiser's Adam state: its update count and per-parameter moments {torch key: array}."""
    count: int
    mu: dict  # exp_avg
    nu: dict  # exp_avg_sq
    betas: tuple
    eps: float


def read_adam(path, state_dict) -> tuple:
    """(AdamMoments, '') of the checkpoint's torch Adam state over `state_dict`'s parameters, or (None, why not).

    torch numbers its optimiser state by position in model.parameters(): the state_dict's keys without the
    buffers (the frozen Fourier W included; it never gets a gradient, so it has no state)."""
    opt = pth.load(path, keys=('optimizer',)).get('optimizer')
    if not isinstance(opt, dict) or not opt.get('state'):
        return None, 'the checkpoint holds no optimiser state (a network that was never stepped, or weights alone)'
    try:  # the file is untrusted: anything malformed means the moments stay behind, said why
        return _adam(opt, [k for k in state_dict if k not in convert.BUFFERS], state_dict)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        return None, f'its optimiser state is malformed ({type(e).__name__}: {e})'


def _adam(opt: dict, names: list, state_dict) -> tuple:
    groups = opt.get('param_groups') or [{}]
    if len(groups) != 1 or 'betas' not in groups[0] or groups[0].get('amsgrad'):
        return None, 'its optimiser is not the reference\'s Adam (one parameter group, betas, no AMSGrad)'
    if sorted(groups[0]['params']) != list(range(len(names))):
        return None, (f'its optimiser covers {len(groups[0]["params"])} tensors, its model {len(names)} parameters: '
                      f'they do not line up')
    mu, nu, counts = {}, {}, set()
    for index, entry in opt['state'].items():
        key = names[index] if type(index) is int and 0 <= index < len(names) else None
        if key is None or not isinstance(entry, dict) or not {'exp_avg', 'exp_avg_sq', 'step'} <= set(entry) or any(
                np.shape(entry[m]) != np.shape(state_dict[key]) for m in ('exp_avg', 'exp_avg_sq')):
            return None, f'its optimiser state {index!r:.40} is not the Adam moments of a parameter of its model'
        mu[key], nu[key] = entry['exp_avg'], entry['exp_avg_sq']
        counts.add(int(np.asarray(entry['step']).item()))
    if len(counts) != 1:
        return None, f'its parameters were updated different numbers of times ({sorted(counts)})'
    for key in names:  # never updated (the Fourier W): zero moments, as Adam starts them
        mu.setdefault(key, np.zeros(np.shape(state_dict[key]), np.float32))
        nu.setdefault(key, np.zeros(np.shape(state_dict[key]), np.float32))
    return AdamMoments(counts.pop(), mu, nu, tuple(float(b) for b in groups[0]['betas']),
                       float(groups[0].get('eps', 1e-8))), ''


def network_layout(networks: Networks, k: int) -> dict:
    """{torch key: (our path, torch shape)} of the config's level-k network (shapes only, nothing allocated)."""
    variables = jax.eval_shape(lambda key: networks.model_of(k).init(
        {'params': key, 'dropout': key}, jax.numpy.zeros((1,) + tuple(networks.shapes[k])), jax.numpy.ones((1,)),
        train=False), jax.random.PRNGKey(0))
    return convert.torch_layout(variables['params'])


def _fits(state_dict, layout) -> bool:
    keys = set(state_dict) - set(convert.BUFFERS)
    return keys == set(layout) and all(tuple(np.shape(state_dict[k])) == layout[k][1] for k in layout)


def _mismatch(state_dict, layout, networks: Networks, k: int) -> str:
    """The first difference between a checkpoint and the level-k network, with the config fields to check."""
    shape = 'x'.join(map(str, networks.shapes[k]))
    keys = set(state_dict) - set(convert.BUFFERS)
    if (convert.FOURIER_KEY in keys) != (convert.FOURIER_KEY in layout):
        found, want = (('Fourier', 'positional') if convert.FOURIER_KEY in keys else ('positional', 'Fourier'))
        return (f'the checkpoint uses the {found} time embedding, the config the {want} one: use the config it '
                f'was trained with (NCSN++ / VE: Fourier; DDPM++ / VP, sub-VP: positional)')
    for key in layout:
        if key in state_dict and tuple(np.shape(state_dict[key])) != layout[key][1]:
            return (f'{key} has shape {tuple(np.shape(state_dict[key]))} in the checkpoint but '
                    f'{layout[key][1]} in the config\'s level-{k} network ({shape}): the checkpoint was '
                    f'trained with other model settings; {_width_hint(state_dict, networks)}')
    missing, extra = sorted(set(layout) - keys), sorted(keys - set(layout))
    return (f'the checkpoint has {len(keys)} tensors, the config\'s level-{k} network ({shape}) has {len(layout)}'
            + (f'; absent from the checkpoint: {missing[0]} {layout[missing[0]][1]}' if missing else '')
            + (f'; not in the network: {extra[0]} {tuple(np.shape(state_dict[extra[0]]))}' if extra else '')
            + ': use the config the checkpoint was trained with, or match config.model.num_res_blocks, ch_mult, '
              'attn_resolutions, attention_placement, resblock_type and progressive* to it')


def _width_hint(state_dict, networks: Networks) -> str:
    """'set --config.model.nf=N' when the first convolution tells the checkpoint's width, else a field list."""
    convs = [k for k in state_dict if k.endswith('.weight') and np.ndim(state_dict[k]) == 4]
    first = min(convs, key=lambda k: int(k.split('.')[1])) if convs else None
    if first is not None:
        nf, channels = np.shape(state_dict[first])[:2]
        if nf != networks.image_model.net.nf:
            return f'it has nf={nf}: set --config.model.nf={nf}'
        if channels != networks.shapes[0][-1]:
            return f'it takes {channels} channels: set --config.data.num_channels={channels}'
    return 'check config.model.nf, ch_mult, num_res_blocks and data.num_channels'


def layout_for_level(state_dict, networks: Networks, level: int) -> dict:
    """The level-`level` layout if the checkpoint fits it; otherwise a one-line error naming the level it fits."""
    layout = network_layout(networks, level)
    if _fits(state_dict, layout):
        return layout
    for k in networks.levels:
        if k != level and _fits(state_dict, network_layout(networks, k)):
            raise IncompatibleCheckpoint(f'the checkpoint is the level-{k} network ({"x".join(map(str, networks.shapes[k]))} '
                               f'input), not level {level} ({"x".join(map(str, networks.shapes[level]))}): '
                               f'import it with --import_level={k}')
    raise IncompatibleCheckpoint(_mismatch(state_dict, layout, networks, level))


def check_noise_scales(state_dict, networks: Networks):
    """VE: the reference's sigmas buffer runs from sigma_max to sigma_min; they must be the config's."""
    sigmas = state_dict.get('sigmas')
    if networks.sde.kind != 've' or sigmas is None or np.size(sigmas) < 2:
        return
    for name, found, want in (('sigma_max', float(sigmas[0]), networks.sde.sigma_max),
                              ('sigma_min', float(sigmas[-1]), networks.sde.sigma_min)):
        if not math.isclose(found, want, rel_tol=1e-4):
            raise IncompatibleCheckpoint(f'the checkpoint was trained with {name}={found:g}, the config has '
                               f'sde.{name}={want:g}: set --config.sde.{name}={found:g} (or use the config the '
                               f'checkpoint was trained with)')


def to_params(weights: dict, layout: dict) -> dict:
    """Our parameter tree from {torch key: array} through the layout of `network_layout`."""
    return traverse_util.unflatten_dict({path: convert.from_torch(path, weights[key]).astype(np.float32)
                                         for key, (path, _) in layout.items()})


def network_params(networks: Networks, path, level: int, weights: str = 'ema') -> dict:
    """Parameters of the reference checkpoint at `path` for the level-`level` network (checked)."""
    chosen, state_dict, _, _ = read_reference(path, weights)
    return to_params(chosen, layout_for_level(state_dict, networks, level))
