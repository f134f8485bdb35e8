"""Trained or imported parameters of a workdir: the checkpoint's own record says which levels it holds."""
from subspace_diffusion import parallel
from subspace_diffusion.checkpoints import Checkpoints
from subspace_diffusion.experiment import Experiment
from subspace_diffusion.train_state import abstract_state, checkpoint_meta, make_optimizer


def load_trained(config, workdir, step=None, mesh=None):
    """(Experiment of the checkpoint's levels, EMA params {name: params} replicated over the mesh, step).

    Reads the checkpoint at `step` (default latest) in <workdir>. The levels and parameter sharing
    come from the checkpoint, so a level-k run's workdir loads under any config of the same data,
    chain and model.
    """
    exp, state, step = load_state(config, workdir, step, mesh)
    return exp, state.ema_params, step


def load_state(config, workdir, step=None, mesh=None):
    """(Experiment of the checkpoint's levels, its whole TrainState, step) at `step` (default latest)."""
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        step = ckpts.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'no checkpoint in {ckpts.root}: train first (main.py --mode=train), import '
                                    f'one (main.py --mode=import) or point at the right workdir')
        meta = ckpts.read_meta(step)
        exp = Experiment(config, levels=meta['levels'], shared=meta['param_keys'] == ['shared'])
        tx = make_optimizer(config, exp.param_keys)
        state, _ = ckpts.restore(abstract_state(exp, tx, mesh or parallel.make_mesh()), checkpoint_meta(exp), step)
    finally:
        ckpts.close()
    return exp, state, step
