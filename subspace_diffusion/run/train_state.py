"""What a training checkpoint holds: the train state, its optimiser, and the record checked on restore.

Shared by training (which writes and resumes it), loading (which reads its EMA parameters alone) and the
import of published checkpoints (which writes one), so the three agree on one format.
"""
import dataclasses

import flax
import jax
import jax.numpy as jnp
import optax

from subspace_diffusion.models.ncsnpp import COMPUTE_FIELDS
from subspace_diffusion.run import parallel
from subspace_diffusion.run.networks import Networks
from subspace_diffusion.run.settings import Optim


class TrainState(flax.struct.PyTreeNode):
    """Everything a checkpoint must hold to resume: step, parameters, their EMA and the optimiser state."""

    step: jax.Array
    params: dict
    ema_params: dict
    opt_state: optax.OptState


def learning_rate(optim: Optim):
    """Schedule step -> lr: lr min(step / warmup, 1) for the update of step `step` (0-based), as the reference's
    optimization_manager: its first update has lr 0 (Adam's moments still take that gradient)."""
    lr, warmup = optim.lr, optim.warmup
    if warmup <= 0:
        return lambda step: jnp.asarray(lr, jnp.float32)
    return lambda step: lr * jnp.minimum(step / warmup, 1.0)


def ema_decay(rate: float, step):
    """EMA decay of the update after optimiser step `step` (0-based): min(rate, (1 + n) / (10 + n)) for the n-th
    update, n = step + 1, as the reference's models/ema.py (use_num_updates): early averages forget the init."""
    n = jnp.asarray(step, jnp.float32) + 1.0
    return jnp.minimum(rate, (1.0 + n) / (10.0 + n))


def make_optimizer(optim: Optim, param_keys) -> optax.GradientTransformation:
    """Global-norm clipping then Adam or AdamW, applied to each parameter set independently.

    Clipping per set keeps a multi-level run identical to training each level on its own. 'Adam' takes
    weight decay as torch's Adam (and score-SDE) does, an L2 term added to the gradient; 'AdamW' decouples it.
    """
    schedule = learning_rate(optim)

    def one():
        clip = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
        if optim.optimizer.lower() == 'adamw':
            return optax.chain(*clip, optax.adamw(schedule, b1=optim.beta1, eps=optim.eps,
                                                  weight_decay=optim.weight_decay))
        decay = [optax.add_decayed_weights(optim.weight_decay)] if optim.weight_decay else []
        return optax.chain(*clip, *decay, optax.scale_by_adam(b1=optim.beta1, eps=optim.eps),
                           optax.scale_by_learning_rate(schedule))

    return optax.multi_transform({k: one() for k in param_keys},
                                 lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()})


def adam_moments(opt_state, key: str) -> tuple:
    """(update count, mu, nu) of parameter set `key` in a make_optimizer state; mu, nu: trees of that set."""
    adam = _adam_state(opt_state.inner_states[key])
    return adam.count, adam.mu[key], adam.nu[key]


def with_adam_moments(opt_state, key: str, count, mu, nu):
    """`opt_state` with parameter set `key`'s Adam moments and update count (its schedule's count too) replaced."""
    inner = opt_state.inner_states[key]
    adam = _adam_state(inner)
    inner = optax.tree_utils.tree_set(inner, count=jnp.asarray(count, jnp.int32), mu={**adam.mu, key: mu},
                                      nu={**adam.nu, key: nu})
    return opt_state._replace(inner_states={**opt_state.inner_states, key: inner})


def _adam_state(inner) -> optax.ScaleByAdamState:
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    (adam,) = [x for x in jax.tree.leaves(inner, is_leaf=is_adam) if is_adam(x)]
    return adam


def init_key(seed: int) -> jax.Array:
    """The PRNG key a training run of `seed` draws its initial parameters from (its steps use other streams)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), 0)


def init_state(networks: Networks, tx, key) -> TrainState:
    """Fresh state: step 0, new parameters, EMA equal to them."""
    params = networks.init_params(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=tx.init(params))


def abstract_state(networks: Networks, tx, mesh):
    """Shapes, dtypes and (replicated) shardings of the train state, for restoring without initialising."""
    return _on_mesh(jax.eval_shape(lambda k: init_state(networks, tx, k), jax.random.PRNGKey(0)), mesh)


def abstract_params(networks: Networks, mesh) -> dict:
    """Shapes, dtypes and (replicated) shardings of one parameter dict, e.g. to restore the EMA parameters alone."""
    return _on_mesh(jax.eval_shape(networks.init_params, jax.random.PRNGKey(0)), mesh)


def _on_mesh(shapes, mesh):
    repl = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def checkpoint_meta(networks: Networks) -> dict:
    """What a checkpoint must agree on with the settings that restore it (checked field by field)."""
    net = networks.image_model.net
    return {'param_keys': list(networks.param_keys), 'levels': list(networks.levels),
            'level_shapes': [list(networks.shapes[k]) for k in networks.levels], 'sde': networks.sde.kind,
            'network': {f.name: _json(getattr(net, f.name)) for f in dataclasses.fields(net)
                        if f.name not in COMPUTE_FIELDS}}


def _json(value):
    return list(value) if isinstance(value, tuple) else value
