"""Training: DSM on every trained level, Adam with warmup and clipping, EMA, data-parallel, preemptible.

One compiled call runs `training.n_jitted_steps` optimiser steps (`lax.scan`) on a global batch
sharded over the mesh; parameters are replicated and XLA averages gradients across devices.
Randomness is `fold_in(seed key, step)` and the data stream is a function of the step, so a run
resumed from a checkpoint repeats exactly what the uninterrupted run would have done.
"""
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from subspace_diffusion import data, parallel
from subspace_diffusion.checkpoints import ARCHIVE, PREEMPT, Checkpoints
from subspace_diffusion.experiment import Experiment
from subspace_diffusion.images import save_image_grid
from subspace_diffusion.progress import fmt_duration
from subspace_diffusion.train_state import abstract_state, checkpoint_meta, init_state, learning_rate, make_optimizer


def make_train_step(exp: Experiment, tx, mesh, seed: int, batch_steps: int = 1):
    """Jitted (state, batch (batch_steps, B, H, W, C)) -> (state, metrics with a leading batch_steps axis)."""
    base_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    schedule = learning_rate(exp.config)
    rate = exp.config.model.ema_rate

    def one_step(state, images):
        key = jax.random.fold_in(base_key, state.step)
        (loss, per_level), grads = jax.value_and_grad(
            lambda p: exp.loss(p, images, key, train=True), has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, state.ema_params, params)
        metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads), 'param_norm': optax.global_norm(params),
                   'lr': schedule(state.step),
                   **{f'loss_level_{k}': v for k, v in per_level.items()}}
        return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics

    # XLA:CPU runs a backward pass inside a while loop ~15x slower than the same code straight-line
    # (measured on the quick config: 3.5 s vs 0.24 s per step; even a 1-step scan stays a loop),
    # so on CPU the steps are unrolled at trace time; accelerators keep the compact lax.scan.
    unrolled = jax.default_backend() == 'cpu'

    def train_step(state, batch):
        if not unrolled:
            return jax.lax.scan(one_step, state, batch)
        metrics = []
        for images in batch:
            state, m = one_step(state, images)
            metrics.append(m)
        return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

    repl = parallel.replicated(mesh)
    return jax.jit(train_step, in_shardings=(repl, parallel.batch_sharding(mesh, 1)),
                   out_shardings=(repl, repl), donate_argnums=0)


def _check_config(config):
    tr = config.training
    n = tr.n_jitted_steps
    if n < 1:
        raise ValueError(f'training.n_jitted_steps={n} must be >= 1')
    for name in ('log_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
        if tr[name] % n:
            raise ValueError(f'training.{name}={tr[name]} is not a multiple of training.n_jitted_steps={n}: '
                             f'checkpoints and logs happen between compiled calls')


class _Stop:
    """Records SIGTERM so the loop can save once more and exit between compiled calls."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _gather(x):
    """A global (possibly multi-host) array as one numpy array on every process."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else x)


def train(config, workdir):
    """Train the levels named by subspace.train_level; resumes from <workdir>/checkpoints if present."""
    tr = config.training
    _check_config(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(tr.batch_size, mesh)
    exp = Experiment(config)  # chain / level / cutoff errors surface here, before anything compiles
    main_process = parallel.is_main_process()
    ckpts = Checkpoints(workdir, keep_archive=tr.get('keep_checkpoints', 100))
    start = ckpts.latest_step() or 0
    ds = data.get_dataset(config, 'train', tr.batch_size, process_index=jax.process_index(),
                          process_count=jax.process_count(), seed=config.seed, start_step=start)
    n_jit = tr.n_jitted_steps
    first = np.stack([next(ds)['image'] for _ in range(n_jit)])

    tx = make_optimizer(config, exp.param_keys)
    meta = checkpoint_meta(exp)
    if start:
        state, _ = ckpts.restore(abstract_state(exp, tx, mesh), meta)
        logging.info('resuming from the checkpoint at step %d', start)
    else:
        init_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
        state = jax.jit(lambda k: init_state(exp, tx, k), out_shardings=parallel.replicated(mesh))(init_key)
    n_params = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in state.params.items()}
    logging.info('training levels %s of %s (%s), global batch %d on %d device(s) / %d process(es)',
                 exp.levels, exp.chain.signature() if exp.chain else 'full space',
                 ', '.join(f'{k}: {n:,} params' for k, n in n_params.items()), tr.batch_size,
                 mesh.devices.size, jax.process_count())

    step_fn = make_train_step(exp, tx, mesh, config.seed, n_jit)
    # Built (statistics measured) before the first step: a problem shows at once, and no dataset pass
    # runs beside an asynchronous checkpoint save.
    sample_fn = _snapshot_sampler(exp, workdir, mesh) if tr.snapshot_sampling else None
    writer = None
    if main_process:
        from tensorboardX import SummaryWriter  # only the logging process needs it
        writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    stop = _Stop()
    step = start
    window = {'t': None, 'step': step, 'metrics': []}
    try:
        batch = first
        while step < tr.n_iters:
            state, metrics = step_fn(state, parallel.global_batch(batch, mesh, leading_axes=1))
            step += n_jit
            if step < tr.n_iters:  # the next host batch is prepared while the device computes
                batch = np.stack([next(ds)['image'] for _ in range(n_jit)])
            metrics = jax.device_get(metrics)
            # Checked before any save, so a checkpoint never holds parameters that went non-finite.
            bad = ~(np.isfinite(metrics['loss']) & np.isfinite(metrics['grad_norm'])
                    & np.isfinite(metrics['param_norm']))
            if bad.any():
                ckpts.wait()
                raise FloatingPointError(
                    f'non-finite loss or gradient at step {step - n_jit + int(np.argmax(bad)) + 1}: training '
                    f'stopped. The last good checkpoint (step {ckpts.latest_step()}) is intact; lower optim.lr, '
                    f'keep optim.grad_clip > 0 or check the data, then rerun the same command to resume.')
            window['metrics'].append(metrics)
            if window['t'] is None:  # the first call includes compilation: time from its end
                window.update(t=time.perf_counter(), step=step, metrics=[])
            elif step % tr.log_freq == 0 or step >= tr.n_iters:
                window = _log(window, step, tr, writer, main_process)

            last = step >= tr.n_iters
            stopping = parallel.any_process(stop.requested)
            archive = step % tr.snapshot_freq == 0 or last
            # An archived step is also the newest resume point, so the preemption slot can skip it.
            if archive or stopping or step % tr.snapshot_freq_for_preemption == 0:
                ckpts.save(step, state, meta, ARCHIVE if archive else PREEMPT)
            if archive and sample_fn is not None:
                _write_samples(sample_fn, state, step, config, workdir, writer, main_process)
            if stopping:
                ckpts.wait()
                logging.info('SIGTERM: saved step %d to %s; rerun the same command to resume', step, ckpts.root)
                raise SystemExit(143)
    finally:
        stop.restore()
        ckpts.close()
        if writer is not None:
            writer.close()
    logging.info('done: step %d, checkpoints in %s', step, ckpts.root)
    return state


def _log(window, step, tr, writer, main_process):
    """Progress line and TensorBoard scalars over the steps since the last log; returns a fresh window."""
    elapsed = time.perf_counter() - window['t']
    steps = step - window['step']
    its = steps / max(elapsed, 1e-9)
    means = {k: float(np.mean(np.concatenate([np.atleast_1d(m[k]) for m in window['metrics']])))
             for k in window['metrics'][0]}
    if main_process:
        eta = (tr.n_iters - step) / max(its, 1e-9)
        logging.info('step %d/%d  loss %.4f  grad_norm %.3f  lr %.2e  %.2f it/s  %.1f examples/s  ETA %s',
                     step, tr.n_iters, means['loss'], means['grad_norm'], means['lr'], its,
                     its * tr.batch_size, fmt_duration(eta))
        for k, v in means.items():
            writer.add_scalar(f'train/{k}', v, step)
        writer.add_scalar('train/examples_per_sec', its * tr.batch_size, step)
        writer.add_scalar('train/steps_per_sec', its, step)
        writer.flush()
    return {'t': time.perf_counter(), 'step': step, 'metrics': []}


def _snapshot_sampler(exp: Experiment, workdir, mesh):
    """The compiled sampler for snapshot grids: the subspace chain when every level is trained."""
    stats = exp.load_stats(workdir, write=parallel.is_main_process()) if len(exp.levels) > 1 else None
    sample, nfe = exp.sampler(stats, sharding=parallel.batch_sharding(mesh))
    logging.info('snapshot sampler: effective NFE %.1f per sample', nfe)
    return sample


def _write_samples(sample_fn, state, step, config, workdir, writer, main_process):
    """Sample with the EMA parameters and write <workdir>/samples/step_<step>.png (+ TensorBoard image)."""
    n_dev = jax.device_count()
    n = max(n_dev, math.ceil(config.training.get('snapshot_samples', 64) / n_dev) * n_dev)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), 2), step)
    t0 = time.perf_counter()
    x = _gather(sample_fn(state.ema_params, key, n))
    images = np.clip(data.get_inverse_scaler(config.data.centered)(x), 0., 1.)
    if main_process:
        path = os.path.join(workdir, 'samples', f'step_{step:07d}.png')
        grid = save_image_grid(images, path)
        writer.add_image('samples', np.repeat(grid, 3 // grid.shape[-1], axis=-1), step, dataformats='HWC')
        writer.flush()
        logging.info('wrote %s (%d samples in %.1fs)', path, n, time.perf_counter() - t0)
