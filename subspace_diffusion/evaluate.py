"""main.py --mode=eval: sample, score and measure bits/dim of archived checkpoints.

For each archived step of the level-0 workdir in [eval.begin_ckpt, eval.end_ckpt] (step values,
inclusive; -1 = latest): the EMA parameters of every level sampled (0..K with eval.use_subspace and a
chain, else level 0 alone; from --workdir or eval.level_workdirs), then
- eval.num_samples samples, drawn resumably in batches (sample_shards.py),
- their quality against the reference statistics (quality.py): FID / IS / KID with local Inception
  weights, the download-free proxy Frechet distances always, plus effective NFE, wall time, samples/s,
- optionally bits/dim of eval.bpd_dataset (bpd.py).
Results go to <workdir>/<eval.folder>/step_<step>/metrics.json and the log.
"""
import os

import jax
from absl import logging
from jax.experimental import multihost_utils

from subspace_diffusion import loading, parallel, quality, sample_shards
from subspace_diffusion.bpd import bits_per_dim
from subspace_diffusion.checkpoints import Checkpoints
from subspace_diffusion.experiment import Experiment
from subspace_diffusion.files import atomic_json
from subspace_diffusion.images import save_image_grid
from subspace_diffusion.settings import Settings


def level_workdirs(settings: Settings, workdir, levels) -> list:
    """Workdir of each level: eval.level_workdirs (index = level, '' = --workdir), or --workdir for all."""
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


def eval_steps(settings: Settings, workdir) -> list:
    """Archived steps of the run in `workdir` within [eval.begin_ckpt, eval.end_ckpt]; -1 = latest archived step."""
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        steps = ckpts.archived_steps()
    finally:
        ckpts.close()
    if not steps:
        raise FileNotFoundError(f'no archived checkpoint in {os.path.join(workdir, "checkpoints", "archive")}: '
                                f'training archives one every training.snapshot_freq steps and at its end')
    begin, end = settings.eval.begin_ckpt, settings.eval.end_ckpt
    begin = steps[-1] if begin == -1 else begin
    end = steps[-1] if end == -1 else end
    chosen = [s for s in steps if begin <= s <= end]
    if not chosen:
        raise ValueError(f'no archived step in [eval.begin_ckpt, eval.end_ckpt] = [{begin}, {end}] (step values, '
                         f'not indices); archived steps in {workdir}: {steps}')
    return chosen


def evaluate(settings: Settings, workdir) -> list:
    """Sample, score and (optionally) measure bits/dim for each archived step in the eval range -> [metrics]."""
    ev = settings.eval
    if not (ev.enable_sampling or ev.enable_bpd):
        raise ValueError('nothing to do: set config.eval.enable_sampling and/or config.eval.enable_bpd')
    mesh = parallel.make_mesh()
    parallel.check_batch_size(ev.batch_size, mesh, 'eval.batch_size')
    K = settings.subspace.levels
    exp = Experiment(settings, tuple(range(K + 1)) if K and ev.use_subspace else (0,))
    dirs = level_workdirs(settings, workdir, exp.levels)
    steps = eval_steps(settings, dirs[0])
    stats = exp.load_stats(workdir, write=parallel.is_main_process()) if exp.levels != (0,) else None
    sample_fn, nfe_kind = (sample_shards.make_sample_fn(exp, stats, mesh, ev.batch_size) if ev.enable_sampling
                           else (None, None))
    logging.info('evaluating steps %s of %s in the %s', steps, dirs[0], exp.describe())
    results = []
    for step in steps:
        loaded = loading.load_levels(settings, exp.levels, dirs, step, mesh)
        folder = os.path.join(workdir, ev.folder, f'step_{step}')
        os.makedirs(folder, exist_ok=True)
        metrics = {'step': step, 'checkpoints': {str(k): v for k, v in loaded.sources.items()},
                   'space': exp.describe()}
        if ev.enable_sampling:
            metrics.update(method=settings.sampling.method, num_samples=ev.num_samples, nfe_kind=nfe_kind,
                           **sample_shards.draw(exp, sample_fn, loaded.params, folder,
                                                sample_shards.record(exp, loaded.sources)))
            if jax.process_count() > 1:  # every process reads the shards that process 0 wrote
                multihost_utils.sync_global_devices(f'eval samples of step {step} written')
            images, metrics['nfe_per_sample'] = sample_shards.load(folder, metrics['batches'])
            grid = os.path.join(folder, 'samples_grid.png')
            if parallel.is_main_process() and not os.path.exists(grid):
                save_image_grid(images[:ev.batch_size] / 255., grid)
            metrics.update(quality.sample_metrics(settings, workdir, images))
        if ev.enable_bpd:
            metrics.update(bits_per_dim(exp, stats, loaded.params, mesh))
        if parallel.is_main_process():
            atomic_json(os.path.join(folder, 'metrics.json'), metrics)
        logging.info('step %d: %s', step, ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                                                   for k, v in metrics.items() if k != 'checkpoints'))
        results.append(metrics)
    return results
