"""Resumable, sharded sampling for evaluation: one .npz per batch, a function of the batch index alone.

Batch i of an eval folder uses the key fold_in(key, i) and is written atomically as samples_<i>.npz,
so a killed evaluation, rerun with the same command, keeps its batches and produces the same samples.
A folder records what determined its samples (samples_settings.json); other settings are refused. A
class-conditional model's samples are drawn for the labels of eval.labels in turn (`eval_labels`), kept in
each shard beside its samples.
"""
import dataclasses
import json
import math
import os
import time

from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from subspace_diffusion.formats.files import (
    FileProblem,
    atomic_json,
    atomic_npz,
    read_json,
    read_npz,
)
from subspace_diffusion.formats.images import to_uint8
from subspace_diffusion.run import parallel
from subspace_diffusion.run.progress import fmt_duration
from subspace_diffusion.run.settings import differences

SAMPLE_STREAM = 3  # fold_in index of eval sampling randomness (training uses 0..2)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """An eval folder's samples: how many, in batches of what size, from which key, and what made them."""

    folder: str
    num_samples: int
    batch_size: int
    key: jax.Array
    record: dict  # what determines the samples (settings, space, checkpoint steps); a rerun must match it
    labels: Optional[np.ndarray] = None  # (num_samples,) class labels of a class-conditional model's samples

    @property
    def num_batches(self) -> int:
        """Batches of the folder, the last one possibly partial."""
        return math.ceil(self.num_samples / self.batch_size)

    def path(self, i: int) -> str:
        """samples_<i>.npz of the folder."""
        return os.path.join(self.folder, f'samples_{i}.npz')


def eval_labels(settings) -> Optional[np.ndarray]:
    """Class labels (eval.num_samples,) of a class-conditional model's samples: eval.labels (or every class) in turn,
    so each requested class gets an equal share; None for an unconditional model."""
    classes = settings.network.num_classes
    if not classes:
        return None
    requested = np.asarray(settings.eval.labels or range(classes), np.int32)
    return requested[np.arange(settings.eval.num_samples) % len(requested)]


def plan(settings, folder, description: str, sources: dict) -> ShardPlan:
    """The shards of eval.num_samples samples of `settings` in `folder`, keyed on the run seed."""
    ev = settings.eval
    sampling = dataclasses.asdict(settings.sampling)
    if not settings.sampling.guidance:  # so folders sampled before guidance existed keep their record
        sampling.pop('guidance')
    record = {'num_samples': ev.num_samples, 'batch_size': ev.batch_size, 'seed': settings.seed,
              'sampling': sampling, 'space': description,
              'checkpoint_steps': {str(k): src['step'] for k, src in sources.items()}}
    labels = eval_labels(settings)
    if labels is not None:
        record.update(num_classes=settings.network.num_classes, labels=list(ev.labels) or 'every class')
    key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), SAMPLE_STREAM)
    return ShardPlan(folder, ev.num_samples, ev.batch_size, key, json_ready(record), labels)


def json_ready(record: dict) -> dict:
    """The record as JSON will give it back (tuples as lists), so records compare equal after a round trip."""
    return json.loads(json.dumps(record))


def draw(sample_fn, params, to_unit, shards: ShardPlan) -> dict:
    """Write every missing shard: sample_fn(params, key, batch[, labels (batch,)]) -> (x model space, info {'nfe',
    ...}), to_unit: -> [0, 1]; each shard keeps the samples, the sampler's info and the samples' class labels."""
    meta_path = os.path.join(shards.folder, 'samples_settings.json')
    if os.path.exists(meta_path):
        old = read_json(meta_path, 'sample record', f'delete {shards.folder} to sample again')
        changed = differences(old, shards.record)
        if changed:
            raise ValueError(f'{shards.folder} holds samples made with other settings ({", ".join(changed)} differ; '
                             f'see {meta_path}): set eval.folder to evaluate these settings elsewhere, delete the '
                             f'folder to resample, or rerun with the recorded settings')
    elif parallel.is_main_process():
        atomic_json(meta_path, shards.record)
    n_batches = shards.num_batches
    present = np.array([_usable(shards.path(i)) for i in range(n_batches)])
    if jax.process_count() > 1:  # every process must run the same sampling calls: process 0's view decides
        present = np.asarray(multihost_utils.broadcast_one_to_all(present))
    todo = [i for i in range(n_batches) if not present[i]]
    if len(todo) < n_batches:
        logging.info('resuming: %d of %d sample batches already in %s', n_batches - len(todo), n_batches,
                     shards.folder)
    if todo:
        logging.info('sampling %d batch(es) of %d (%s; the first batch compiles the sampler) ...', len(todo),
                     shards.batch_size, shards.record['space'])
    times = []
    for j, i in enumerate(todo):
        t0 = time.perf_counter()
        key = jax.random.fold_in(shards.key, i)  # batch i's key alone
        rows = slice(i * shards.batch_size, (i + 1) * shards.batch_size)
        if shards.labels is None:
            x, info = sample_fn(params, key, shards.batch_size)
            kept = {}
        else:
            x, info = sample_fn(params, key, shards.batch_size, parallel.pad_rows(shards.labels[rows],
                                                                                  shards.batch_size))
            kept = {'labels': shards.labels[rows]}
        x = parallel.gather(x)
        if not np.all(np.isfinite(x)):  # uint8 conversion would hide it: never score NaN as black images
            raise FloatingPointError(f'sample batch {i} is not finite ({np.mean(~np.isfinite(x)):.0%} of its values): '
                                     f'check the sampling settings and the checkpoint; nothing of this batch was written')
        images = to_uint8(to_unit(x))[:shards.num_samples - i * shards.batch_size]
        if parallel.is_main_process():
            atomic_npz(shards.path(i), samples=images, **kept, **{k: np.asarray(v, np.float64) for k, v in info.items()})
        times.append(time.perf_counter() - t0)
        # The first batch of a run includes compilation: the rate is measured on the later ones when there are any.
        per_batch = float(np.mean(times[1:] or times))
        logging.info('sample batch %d/%d (%d to go)  %.1f samples/s  ETA %s', i + 1, n_batches, len(todo) - j - 1,
                     shards.batch_size / per_batch, fmt_duration(per_batch * (len(todo) - j - 1)))
    return {'batches': n_batches, 'batches_sampled_this_run': len(todo), 'sampling_wall_s': float(sum(times)),
            'samples_per_s': shards.batch_size / float(np.mean(times[1:] or times)) if times else None}


def _usable(path) -> bool:
    """A shard that exists and reads back; a damaged one is sampled again (the log says so)."""
    if not os.path.exists(path):
        return False
    try:
        read_npz(path, 'sample shard', 'it is sampled again', required=('samples', 'nfe'))
        return True
    except FileProblem as e:
        logging.warning('%s', e)
        return False


def load(shards: ShardPlan):
    """(uint8 samples (N, H, W, C), {'nfe_per_sample': mean over batches, and for the adaptive solver
    'ode_steps_max', 'ode_t_end_max'}) from the shards of the folder."""
    images, infos = [], []
    for i in range(shards.num_batches):
        f = read_npz(shards.path(i), 'sample shard', 'delete it and rerun to sample it again',
                     required=('samples', 'nfe') + (('labels',) if shards.labels is not None else ()))
        images.append(f['samples'])
        infos.append({k: float(f[k]) for k in f if k not in ('samples', 'labels')})
    summary = {'nfe_per_sample': float(np.mean([info['nfe'] for info in infos]))}
    for key in ('ode_steps', 'ode_t_end'):
        if all(key in info for info in infos):
            summary[f'{key}_max'] = max(info[key] for info in infos)
    return np.concatenate(images), summary
