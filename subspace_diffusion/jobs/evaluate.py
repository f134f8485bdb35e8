"""main.py --mode=eval: sample, score and measure bits/dim of archived checkpoints.

For each archived step of the level-0 workdir in [eval.begin_ckpt, eval.end_ckpt] (step values,
inclusive; -1 = latest): the EMA parameters of every level sampled (0..K with eval.use_subspace and a
chain, else level 0 alone; from --workdir or eval.level_workdirs), then
- eval.num_samples samples of `sampling.method`, drawn resumably in batches (evaluation/shards.py),
- their quality against the reference statistics (evaluation/quality.py): FID / IS / KID with local Inception
  weights, the download-free Frechet distances always, plus effective NFE, wall time, samples/s; for a
  class-conditional model, samples of the classes of eval.labels in turn under sampling.guidance, and how
  often the classifier sees the requested class and each class's classifier Frechet distance,
- optionally bits/dim of eval.bpd_dataset (evaluation/bpd.py).
Results go to <workdir>/<eval.folder>/step_<step>/metrics.json and the log.
"""
import os

import jax
from absl import logging
from jax.experimental import multihost_utils

from subspace_diffusion.core.sampling import below_minimum, make_sampler
from subspace_diffusion.evaluation import shards
from subspace_diffusion.evaluation.bpd import split_bpd
from subspace_diffusion.evaluation.quality import Scorer
from subspace_diffusion.formats.files import atomic_json
from subspace_diffusion.formats.images import save_image_grid
from subspace_diffusion.run import data, loading, parallel, statistics
from subspace_diffusion.run.checkpoints import Checkpoints
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Settings


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
    levels = tuple(range(K + 1)) if K and ev.use_subspace else (0,)
    steps = eval_steps(settings, loading.level_workdirs(settings, workdir, levels)[0])
    scorer = Scorer(settings, workdir) if ev.enable_sampling else None  # weights checked before any sampling
    exp = Experiment.build(settings, levels)
    stats = statistics.load(settings, exp.chain, workdir, write=parallel.is_main_process()) if K and levels != (0,) \
        else None
    diffusion = exp.diffusion(stats, parallel.batch_sharding(mesh))
    sampler = make_sampler(diffusion, settings.sampling, exp.networks.scores, num_classes=exp.networks.num_classes) \
        if ev.enable_sampling else None
    note = below_minimum(diffusion, settings.sampling) if ev.enable_sampling else None
    if note:
        logging.info('%s', note)
    logging.info('evaluating steps %s in the %s', steps, exp.describe())
    results = []
    for step in steps:
        loaded = loading.load_levels(settings, levels, workdir, step, mesh)
        params = exp.networks.named(loaded.params)
        folder = os.path.join(workdir, ev.folder, f'step_{step}')
        os.makedirs(folder, exist_ok=True)
        metrics = {'step': step, 'checkpoints': {str(k): v for k, v in loaded.sources.items()},
                   'space': exp.describe()}
        if ev.enable_sampling:
            plan = shards.plan(settings, folder, exp.describe(), loaded.sources)
            metrics.update(method=settings.sampling.method, num_samples=ev.num_samples, nfe_kind=sampler.cost.counts,
                           **shards.draw(sampler.sample, params, data.get_inverse_scaler(settings.data.centered),
                                         plan))
            if jax.process_count() > 1:  # every process reads the shards that process 0 wrote
                multihost_utils.sync_global_devices(f'eval samples of step {step} written')
            images, cost = shards.load(plan)
            metrics.update(cost)
            grid = os.path.join(folder, 'samples_grid.png')
            if parallel.is_main_process() and not os.path.exists(grid):
                save_image_grid(images[:ev.batch_size] / 255., grid)
            if plan.labels is not None:
                metrics['guidance'] = settings.sampling.guidance
            metrics.update(scorer.score(images, plan.labels))
        if ev.enable_bpd:
            metrics.update(split_bpd(settings, diffusion, exp.networks.scores, params, mesh))
        if parallel.is_main_process():
            atomic_json(os.path.join(folder, 'metrics.json'), metrics)
        logging.info('step %d: %s', step, ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                                                   for k, v in metrics.items() if k != 'checkpoints'))
        results.append(metrics)
    return results
