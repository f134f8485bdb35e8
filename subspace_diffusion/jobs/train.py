"""Training: DSM on every trained level, Adam with warmup and clipping, EMA, data-parallel, preemptible.

One compiled call runs `training.n_jitted_steps` optimiser steps (`lax.scan`) on a global batch
sharded over the mesh; parameters are replicated and XLA averages gradients across devices.
Randomness is `fold_in(seed key, step)` and the data stream is a function of the step, so a run
resumed from a checkpoint repeats exactly what the uninterrupted run would have done.
"""
import contextlib
import math
import os
import signal
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from subspace_diffusion import compiler
from subspace_diffusion.core.sampling import make_sampler
from subspace_diffusion.formats.images import save_image_grid
from subspace_diffusion.run import data, parallel, records, statistics
from subspace_diffusion.run.checkpoints import ARCHIVE, PREEMPT, Checkpoints, SaveFailed
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.progress import fmt_duration
from subspace_diffusion.run.settings import Settings, Training
from subspace_diffusion.run.train_state import (
    abstract_state,
    checkpoint_meta,
    ema_decay,
    init_key,
    init_state,
    learning_rate,
    make_optimizer,
)


def make_train_step(loss_fn, tx, mesh, schedule, ema_rate: float, seed: int, unrolled: Optional[bool] = None):
    """Jitted (state, batch (n, B, H, W, C)) -> (state, metrics with a leading axis n): n optimiser steps per call.

    loss_fn(params, images, key, train) -> (loss, {level: loss}); schedule(step) -> learning rate (logged).
    A class-conditional model's batch is (images (n, B, H, W, C), labels (n, B)), passed as loss_fn(..., labels=);
    any other pytree of (n, B, ...) arrays reaches loss_fn whole in place of the images (tests feed fixed draws).
    unrolled: the n steps straight-line (True) or in a `lax.scan` (False); None picks by backend (CPU unrolls).
    """
    base_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)

    def one_step(state, batch):
        key = jax.random.fold_in(base_key, state.step)
        images, labels = batch if isinstance(batch, tuple) else (batch, None)
        classes = {} if labels is None else {'labels': labels}
        (loss, per_level), grads = jax.value_and_grad(
            lambda p: loss_fn(p, images, key, train=True, **classes), has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay(ema_rate, state.step)
        ema = jax.tree.map(lambda e, p: e - (1 - decay) * (e - p), state.ema_params, params)
        metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'param_norm': optax.tree.norm(params),
                   'lr': schedule(state.step),
                   **{f'loss_level_{k}': v for k, v in per_level.items()}}
        return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics

    # XLA:CPU runs a backward pass inside a while loop ~15x slower than the same code straight-line
    # (measured on the quick config: 3.5 s vs 0.24 s per step; even a 1-step scan stays a loop),
    # so on CPU the steps are unrolled at trace time; accelerators keep the compact lax.scan.
    if unrolled is None:
        unrolled = jax.default_backend() == 'cpu'

    def train_step(state, batch):
        if not unrolled:
            return jax.lax.scan(one_step, state, batch)
        metrics = []
        for i in range(jax.tree.leaves(batch)[0].shape[0]):
            state, m = one_step(state, jax.tree.map(lambda a: a[i], batch))
            metrics.append(m)
        return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

    repl = parallel.replicated(mesh)
    return compiler.jit(train_step, in_shardings=(repl, parallel.batch_sharding(mesh, 1)),
                        out_shardings=(repl, repl), donate_argnums=0)



class _Stop:
    """Records SIGTERM and SIGINT (Ctrl-C) so the loop can save once more and exit between compiled calls."""

    SIGNALS = {signal.SIGTERM: ('SIGTERM', 143), signal.SIGINT: ('SIGINT', 130)}

    def __init__(self):
        self.received = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        del frame
        self.received = signum

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _save(ckpts: Checkpoints, step, state, meta, kind):
    """Start a save; a failed write (disk full, read-only) becomes one error, the previous checkpoint kept."""
    try:
        ckpts.save(step, state, meta, kind)
    except OSError as e:
        raise SaveFailed(f'saving the checkpoint of step {step} failed ({e.strerror or e}): {_last_good(ckpts)}; '
                         f'free space or fix {ckpts.root}, then rerun to resume') from None


def _last_good(ckpts: Checkpoints) -> str:
    step = ckpts.latest_step()
    return 'no checkpoint yet' if step is None else f'the last good checkpoint (step {step}) is intact'


def train(settings: Settings, workdir):
    """Train the levels of subspace.train_level; resumes from <workdir>/checkpoints if present -> final state."""
    tr = settings.training
    mesh = parallel.make_mesh()
    parallel.check_batch_size(tr.batch_size, mesh)
    exp = Experiment.build(settings, settings.subspace.train_levels(), settings.subspace.shared_params)
    main_process = parallel.is_main_process()
    ckpts = Checkpoints(workdir, keep_archive=tr.keep_checkpoints, record=records.Record.of(settings, 'train'))
    try:
        state = _train(settings, exp, mesh, ckpts, workdir, main_process)
    except SaveFailed:
        raise  # the managers are mid-write and would fail again on close; the caller exits
    except BaseException:
        ckpts.close()
        raise
    ckpts.close()
    return state


def _train(settings, exp, mesh, ckpts, workdir, main_process):
    tr = settings.training
    latest = ckpts.latest_step()
    start = latest or 0
    ds = data.get_dataset(settings.data, 'train', tr.batch_size, shard=data.Shard(
        jax.process_index(), jax.process_count(), settings.seed, start))
    n_jit = tr.n_jitted_steps
    classes = exp.networks.num_classes
    first = _host_batch(ds, n_jit, classes)

    networks = exp.networks
    tx = make_optimizer(settings.optim, networks.param_keys)
    meta = checkpoint_meta(networks)
    if latest is not None:  # a step-0 checkpoint too: imported initial weights train from there
        state, _ = ckpts.restore(abstract_state(networks, tx, mesh), meta)
        logging.info('resuming from the checkpoint at step %d', start)
    else:
        state = compiler.jit(lambda k: init_state(networks, tx, k), out_shardings=parallel.replicated(mesh))(
            init_key(settings.seed))
    n_params = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in state.params.items()}
    logging.info('training levels %s of the %s (%s), global batch %d on %d device(s) / %d process(es)',
                 list(exp.levels), exp.describe(),
                 ', '.join(f'{k}: {n:,} params' for k, n in n_params.items()), tr.batch_size,
                 mesh.devices.size, jax.process_count())

    step_fn = make_train_step(exp.loss, tx, mesh, learning_rate(settings.optim), tr.ema_rate, settings.seed)
    writer = None
    if main_process:
        from tensorboardX import SummaryWriter  # only the logging process needs it
        writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    # Built (statistics measured) before the first step: a problem shows at once, and no dataset pass
    # runs beside an asynchronous checkpoint save.
    snapshots = Snapshots(exp, workdir, mesh, writer) if tr.snapshot_sampling else None
    stop = _Stop()
    step = start
    window = {'t': None, 'step': step, 'metrics': []}
    try:
        batch = first
        if step < tr.n_iters:
            logging.info('compiling the training step (%d optimiser step(s) per call) ...', n_jit)
        compile_start = time.perf_counter()
        while step < tr.n_iters:
            state, metrics = step_fn(state, jax.tree.map(lambda a: parallel.global_batch(a, mesh, leading_axes=1),
                                                         batch))
            step += n_jit
            if step < tr.n_iters:  # the next host batch is prepared while the device computes
                batch = _host_batch(ds, n_jit, classes)
            metrics = jax.device_get(metrics)
            # Checked before any save, so a checkpoint never holds parameters that went non-finite.
            bad = ~(np.isfinite(metrics['loss']) & np.isfinite(metrics['grad_norm'])
                    & np.isfinite(metrics['param_norm']))
            if bad.any():
                ckpts.wait()
                raise FloatingPointError(
                    f'non-finite loss or gradient at step {step - n_jit + int(np.argmax(bad)) + 1}: training '
                    f'stopped, {_last_good(ckpts)}; lower optim.lr, keep optim.grad_clip > 0 or check the data, '
                    f'then rerun the same command to resume.')
            window['metrics'].append(metrics)
            if window['t'] is None:  # the first call includes compilation: time from its end
                logging.info('first call (compilation included) took %s', fmt_duration(time.perf_counter() -
                                                                                       compile_start))
                window.update(t=time.perf_counter(), step=step, metrics=[])
            elif step % tr.log_freq == 0 or step >= tr.n_iters:
                window = _log(window, step, tr, writer, main_process)

            last = step >= tr.n_iters
            stopping = parallel.any_process(stop.received is not None)
            archive = step % tr.snapshot_freq == 0 or last
            # An archived step is also the newest resume point, so the preemption slot can skip it.
            if archive or stopping or step % tr.snapshot_freq_for_preemption == 0:
                _save(ckpts, step, state, meta, ARCHIVE if archive else PREEMPT)
                if ckpts.record_due:  # the settings record describes checkpoints on disk, from the first one on
                    _wait(ckpts, step)
            if archive and snapshots is not None:
                sampled_at = time.perf_counter()
                snapshots.write(state.ema_params, step)
                if window['t'] is not None:  # training speed leaves the snapshot's sampling out
                    window['t'] += time.perf_counter() - sampled_at
            if stopping:
                _wait(ckpts, step)
                name, code = _Stop.SIGNALS.get(stop.received, ('signal', 143))
                logging.info('%s: saved step %d to %s; rerun the same command to resume', name, step, ckpts.root)
                raise SystemExit(code)
        _wait(ckpts, step)
    except BaseException:
        if writer is not None:
            with contextlib.suppress(OSError):  # a full disk fails the event file too; the first error tells
                writer.close()
        raise
    finally:
        stop.restore()
    if writer is not None:
        writer.close()
    logging.info('done: step %d, checkpoints in %s', step, ckpts.root)
    return state


def _host_batch(ds, n: int, classes: int):
    """The next n batches of the stream stacked (n, B, H, W, C); with classes, (images, labels (n, B) int32)."""
    rows = [next(ds) for _ in range(n)]
    images = np.stack([r['image'] for r in rows])
    if not classes:
        return images
    labels = np.stack([r['label'] for r in rows])
    outside = labels[(labels < 0) | (labels >= classes)]
    if outside.size:  # the data's labels are known only once read: a folder of the user's images may hold any
        raise ValueError(f'the training data hold class label {int(outside[0])}, outside the model\'s classes '
                         f'0..{classes - 1}: set config.model.num_classes to the number of classes of the data')
    return images, labels


def _wait(ckpts: Checkpoints, step):
    """Finish pending saves; a failed asynchronous write becomes one error, the previous checkpoint kept."""
    try:
        ckpts.wait()
    except (OSError, ValueError) as e:
        raise SaveFailed(f'saving the checkpoint of step {step} failed ({_first_line(e)}): {_last_good(ckpts)}; '
                         f'free space or fix {ckpts.root}, then rerun to resume') from None


def _first_line(error) -> str:
    """The gist of a (possibly long, multi-line) storage error: 'No space left on device' when that is it."""
    text = str(error)
    for gist in ('No space left on device', 'File too large', 'Read-only file system', 'Permission denied'):
        if gist in text:
            return gist
    return text.splitlines()[0][:200] if text else type(error).__name__


def _log(window, step, tr: Training, writer, main_process):
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


class Snapshots:
    """Sample grids of the EMA parameters at archive steps: <workdir>/samples/step_<step>.png and TensorBoard.

    The sampler is the one of `sampling.method` (the factory's), over the subspace chain when every level is
    trained, or of the one trained subspace level shown up-projected.
    """

    def __init__(self, exp: Experiment, workdir, mesh, writer):
        settings = exp.settings
        stats = (statistics.load(settings, exp.chain, workdir, write=parallel.is_main_process())
                 if exp.levels != (0,) else None)
        classes = exp.networks.num_classes
        self.sampler = make_sampler(exp.diffusion(stats, parallel.batch_sharding(mesh)), settings.sampling,
                                    exp.networks.scores, level=exp.sampled_level, num_classes=classes)
        logging.info('snapshot sampler: %s, %s, effective NFE %s per sample', exp.describe(), settings.sampling.method,
                     self.sampler.cost.effective_nfe)
        n_dev = jax.device_count()
        self.n = max(n_dev, math.ceil(settings.training.snapshot_samples / n_dev) * n_dev)
        self.labels = np.arange(self.n) % classes if classes else None  # every class in turn
        self.key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), 2)
        self.to_unit = data.get_inverse_scaler(settings.data.centered)
        self.workdir, self.writer, self.written = workdir, writer, 0

    def write(self, ema_params, step: int):
        """Sample with the EMA parameters and write the grid of `step`."""
        logging.info('sampling %d images for the snapshot grid of step %d%s ...', self.n, step,
                     '' if self.written else ' (compiling the sampler first)')
        t0 = time.perf_counter()
        x, _ = self.sampler.sample(ema_params, jax.random.fold_in(self.key, step), self.n, self.labels)
        images = np.clip(self.to_unit(parallel.gather(x)), 0., 1.)
        self.written += 1
        if parallel.is_main_process():
            path = os.path.join(self.workdir, 'samples', f'step_{step:07d}.png')
            grid = save_image_grid(images, path)
            self.writer.add_image('samples', np.repeat(grid, 3 // grid.shape[-1], axis=-1), step, dataformats='HWC')
            self.writer.flush()
            logging.info('wrote %s (%d samples in %.1fs)', path, self.n, time.perf_counter() - t0)
