"""What a training checkpoint holds: the train state, its optimiser, and the record checked on restore.

Shared by training (which writes and resumes it), loading (which reads its EMA parameters) and the
import of reference checkpoints (which writes one), so the three agree on one format.
"""
import flax
import jax
import jax.numpy as jnp
import optax

from subspace_diffusion import parallel
from subspace_diffusion.experiment import Experiment


class TrainState(flax.struct.PyTreeNode):
    """Everything a checkpoint must hold to resume: step, parameters, their EMA and the optimiser state."""

    step: jax.Array
    params: dict
    ema_params: dict
    opt_state: optax.OptState


def learning_rate(config):
    """Schedule step -> lr: linear warmup over optim.warmup steps to optim.lr, then constant (score-SDE)."""
    lr, warmup = config.optim.lr, config.optim.warmup
    if warmup <= 0:
        return lambda step: jnp.asarray(lr, jnp.float32)
    return lambda step: lr * jnp.minimum((step + 1) / warmup, 1.0)


def make_optimizer(config, param_keys) -> optax.GradientTransformation:
    """Global-norm clipping then Adam(W), applied to each parameter set independently.

    Clipping per set keeps a multi-level run identical to training each level on its own.
    """
    o = config.optim
    if o.optimizer.lower() not in ('adam', 'adamw'):
        raise ValueError(f"config.optim.optimizer={o.optimizer!r} is not supported: use 'Adam'")
    schedule = learning_rate(config)

    def one():
        clip = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
        adam = optax.adamw(schedule, b1=o.beta1, eps=o.eps, weight_decay=o.weight_decay)
        return optax.chain(*clip, adam)

    return optax.multi_transform({k: one() for k in param_keys},
                                 lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()})


def init_state(exp: Experiment, tx, key) -> TrainState:
    """Fresh state: step 0, new parameters, EMA equal to them."""
    params = exp.init_params(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=tx.init(params))


def abstract_state(exp: Experiment, tx, mesh):
    """Shapes, dtypes and (replicated) shardings of the train state, for restoring without initialising."""
    shapes = jax.eval_shape(lambda k: init_state(exp, tx, k), jax.random.PRNGKey(0))
    repl = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def checkpoint_meta(exp: Experiment) -> dict:
    """What a checkpoint must agree on with the config that restores it."""
    return {'param_keys': list(exp.param_keys), 'levels': list(exp.levels),
            'level_shapes': [list(exp.level_shape(k)) for k in exp.levels], 'sde': exp.sde.kind}
