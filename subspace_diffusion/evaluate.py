"""Evaluation of trained checkpoints (main.py --mode=eval) and reference statistics (--mode=fid_stats).

For each archived step of the level-0 run in [eval.begin_ckpt, eval.end_ckpt] (step values, inclusive),
the full-space and subspace networks' EMA parameters are merged into one {'level_k': ...} dict and:
- eval.num_samples samples are drawn in batches of eval.batch_size (PC sampler over the subspace chain,
  or the probability-flow ODE when sampling.method == 'ode'), sharded over every device. Batch i uses
  the key fold_in(key, i) and is written atomically as <workdir>/<eval.folder>/step_<step>/samples_<i>.npz,
  so a killed eval, rerun with the same command, keeps the batches it has and produces the same samples;
- the samples are scored: FID / IS / KID with the FID Inception when eval.inception_weights is
  available, and always the download-free proxies of metrics/proxy.py (pixel and digits-classifier
  Frechet distances), plus effective NFE, wall time and samples/s;
- optionally bits/dim on eval.bpd_dataset with the implicit-score probability-flow ODE.
Results go to metrics.json in the step's folder and to the log.
"""
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from subspace_diffusion import data, likelihood, loading, parallel
from subspace_diffusion.checkpoints import Checkpoints
from subspace_diffusion.experiment import ALL_LEVELS, Experiment
from subspace_diffusion.images import save_image_grid
from subspace_diffusion.metrics import fid, inception, proxy
from subspace_diffusion.progress import fmt_duration

SAMPLE_STREAM, BPD_STREAM = 3, 4  # fold_in indices of eval randomness (training uses 0..2)
KID_REFERENCE_FEATURES = 10_000  # reference Inception features kept for KID (its subsets hold 1,000)
INCEPTION_BATCH = 200  # images per Inception call (299 px activations dominate memory)


def ref_stats_path(config, workdir) -> str:
    """eval.ref_stats_path, or <workdir>/ref_stats_<dataset>_<size>.npz."""
    d = config.data
    return config.eval.get('ref_stats_path') or os.path.join(workdir, f'ref_stats_{d.dataset}_{d.image_size}.npz')


def _inception_fn(config):
    """The FID Inception (images -> (pool, logits)), or None after logging how to get the weights."""
    try:
        return inception.get_inception_fn(config.eval.inception_weights)
    except inception.InceptionWeightsMissing as e:
        logging.warning('FID / IS / KID skipped (eval.inception_weights=%r): %s', config.eval.inception_weights, e)
        return None


def _batched(fn, images, batch):
    """fn over (N, ...) in fixed-size batches (the last padded, so one compiled shape) -> list of (N, ...) outputs."""
    outs = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        pad = batch - len(chunk)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
        outs.append([np.asarray(o)[:len(chunk)] for o in fn(padded)])
    return [np.concatenate(parts) for parts in zip(*outs)]


def _features(images, proxies, inception_fn) -> dict:
    """{name: (N, D) features} of uint8 images (N, H, W, C) for every metric that applies."""
    feats = {name: fn(images) for name, fn in proxies.items()}
    if inception_fn is not None:
        feats['inception'], feats['inception_logits'] = _batched(inception_fn, images, INCEPTION_BATCH)
    return feats


def _to_uint8(x01) -> np.ndarray:
    return np.round(np.clip(np.asarray(x01, np.float32), 0., 1.) * 255).astype(np.uint8)


def fid_stats(config, workdir):
    """Write the reference statistics of split eval.ref_split to ref_stats_path(): {name}_mu, {name}_sigma."""
    return _write_reference(config, workdir, proxy.proxy_feature_fns(config, workdir), _inception_fn(config))


def _write_reference(config, workdir, proxies, inception_fn) -> dict:
    split = config.eval.get('ref_split', 'train')
    parts, n = [], 0
    for batch in proxy.split_batches(config, split):  # streamed: only features stay in memory
        parts.append(_features(_to_uint8(batch), proxies, inception_fn))
        n += len(batch)
    feats = {name: np.concatenate([p[name] for p in parts]) for name in parts[0] if name != 'inception_logits'}
    arrays = {'split': np.array(split), 'num_examples': np.array(n)}
    for name, f in feats.items():
        arrays[f'{name}_mu'], arrays[f'{name}_sigma'] = fid.feature_stats(f)
    if 'inception' in feats:
        arrays['inception_features'] = feats['inception'][:KID_REFERENCE_FEATURES]
    path = ref_stats_path(config, workdir)
    if parallel.is_main_process():
        _atomic_npz(path, **arrays)
        logging.info('reference statistics of %s/%s (%d images; %s) written to %s', config.data.dataset, split,
                     n, ', '.join(sorted(feats)), path)
    return arrays


def _reference(config, workdir, proxies, inception_fn) -> dict:
    """Reference statistics for every feature set in use; computed as fid_stats does when absent or incomplete."""
    path = ref_stats_path(config, workdir)
    names = list(proxies) + (['inception'] if inception_fn is not None else [])
    if os.path.exists(path):
        with np.load(path) as f:
            ref = {k: f[k] for k in f.files}
        if all(f'{n}_mu' in ref for n in names):
            return ref
        logging.info('%s lacks %s: recomputing the reference statistics', path,
                     [n for n in names if f'{n}_mu' not in ref])
    else:
        logging.info('no reference statistics at %s: computing them (main.py --mode=fid_stats does this alone)', path)
    return _write_reference(config, workdir, proxies, inception_fn)


def _atomic_npz(path, **arrays):
    """np.savez to a temporary file renamed into place, so a killed process never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _atomic_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def eval_experiment(config) -> Experiment:
    """Experiment that samples every level 0..K (eval.use_subspace and a chain), or the full space alone."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.subspace.shared_params = False  # evaluation always holds one entry per level
        if config.subspace.levels and config.eval.get('use_subspace', True):
            config.subspace.train_level = ALL_LEVELS
        else:
            config.subspace.levels, config.subspace.cutoffs, config.subspace.train_level = 0, (), 0
    return Experiment(config)


def level_workdirs(config, workdir, num_levels) -> list:
    """Workdir of each level 0..num_levels: eval.level_workdirs (index = level, '' = --workdir) or --workdir."""
    dirs = tuple(config.eval.get('level_workdirs', ()) or ())
    if not dirs:
        dirs = (workdir,) * (num_levels + 1)
    elif len(dirs) < num_levels + 1:
        raise ValueError(f'eval.level_workdirs={dirs} names {len(dirs)} workdir(s) but sampling needs levels '
                         f'0..{num_levels}: give one workdir per level (index = level; "" = --workdir)')
    dirs = [os.path.abspath(d or workdir) for d in dirs[:num_levels + 1]]
    for k, d in enumerate(dirs):
        if not os.path.isdir(os.path.join(d, 'checkpoints')):
            raise FileNotFoundError(f'no checkpoints in {d} (level {k}): train that level there first '
                                    f'(main.py --mode=train, subspace.train_level={k} or -1), or fix '
                                    f'--workdir / eval.level_workdirs')
    return dirs


def eval_steps(config, workdir) -> list:
    """Archived steps of the run in `workdir` within [eval.begin_ckpt, eval.end_ckpt]; -1 = latest archived step."""
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        steps = ckpts.archived_steps()
    finally:
        ckpts.close()
    if not steps:
        raise FileNotFoundError(f'no archived checkpoint in {os.path.join(workdir, "checkpoints", "archive")}: '
                                f'training archives one every training.snapshot_freq steps and at its end')
    begin, end = config.eval.begin_ckpt, config.eval.end_ckpt
    begin = steps[-1] if begin == -1 else begin
    end = steps[-1] if end == -1 else end
    chosen = [s for s in steps if begin <= s <= end]
    if not chosen:
        raise ValueError(f'no archived step in [eval.begin_ckpt, eval.end_ckpt] = [{begin}, {end}] (step values, '
                         f'not indices); archived steps in {workdir}: {steps}')
    return chosen


def load_level_params(config, dirs, step, mesh):
    """({'level_k': EMA params} for k = 0..len(dirs)-1, {level: {'workdir', 'step'}}) for evaluation at `step`.

    Levels served by the first workdir use `step`; other workdirs (separately trained levels) use their
    latest checkpoint.
    """
    loaded, params, sources = {}, {}, {}
    for k, d in enumerate(dirs):
        want = step if d == dirs[0] else None
        if (d, want) not in loaded:
            loaded[(d, want)] = loading.load_trained(config, d, want, mesh)[1:]
        ema, got = loaded[(d, want)]
        name = 'shared' if 'shared' in ema else f'level_{k}'
        if name not in ema:
            raise ValueError(f'the checkpoint at step {got} in {d} holds {sorted(ema)}, not level_{k}: train level '
                             f'{k} (subspace.train_level={k}, or -1 for every level) and name its workdir at index '
                             f'{k} of eval.level_workdirs, or set eval.use_subspace=False for full-space sampling')
        params[f'level_{k}'] = ema[name]
        sources[f'level_{k}'] = {'workdir': os.path.abspath(d), 'step': int(got)}
    return params, sources


def _eta(seconds_per_item, items_left) -> str:
    return fmt_duration(seconds_per_item * items_left)


def _gather(x) -> np.ndarray:
    """A global (possibly multi-host) array as one numpy array on every process."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else x)


def make_sample_fn(exp: Experiment, stats, mesh, batch_size):
    """(fn(params, key) -> (images (batch_size, H, W, C) model space, NFE), effective-NFE description)."""
    config = exp.config
    sharding = parallel.batch_sharding(mesh)
    if config.sampling.method == 'pc':
        sample, nfe = exp.sampler(stats, sharding=sharding)
        return (lambda params, key: (sample(params, key, batch_size), nfe)), 'effective (sum of n_level / d per call)'
    if config.sampling.method != 'ode':
        raise ValueError(f"sampling.method={config.sampling.method!r} is not supported: use 'pc' or 'ode'")
    K, ev = exp.num_levels, config.eval
    eps = config.sampling.eps or exp.sde.sampling_eps

    def ode(params, key):
        scores = [exp.score_fn(params, k) for k in range(K + 1)]
        x, n_evals = likelihood.ode_sample(key, batch_size, exp.sde, scores, exp.level_shape(0), exp.chain, stats,
                                           exp.cutoffs, eps=eps, rtol=ev.ode_rtol, atol=ev.ode_atol)
        if config.sampling.noise_removal:  # Tweedie at eps with the full-space model, as the PC sampler does
            t = jnp.full((batch_size,), eps)
            x = (x + exp.sde.sigma(eps) ** 2 * scores[0](x, t)) / exp.sde.alpha(eps)
            n_evals = n_evals + 1
        return jax.lax.with_sharding_constraint(x, sharding), n_evals

    return jax.jit(ode), 'ODE solver evaluations of the drift (+1 for denoising), not weighted by level'


def _sample_settings(config, exp, sources):
    """What determines the samples of an eval folder; a rerun must match it to reuse the shards."""
    return {'num_samples': config.eval.num_samples, 'batch_size': config.eval.batch_size, 'seed': config.seed,
            'sampling': config.sampling.to_dict(), 'cutoffs': list(exp.cutoffs), 'levels': exp.num_levels,
            'checkpoint_steps': {name: src['step'] for name, src in sources.items()}}


def _sample(config, sample_fn, params, folder, settings):
    """Write every missing samples_<i>.npz of `folder` -> {batch counts, wall time, samples/s} of this run."""
    ev = config.eval
    n_batches = math.ceil(ev.num_samples / ev.batch_size)
    meta_path = os.path.join(folder, 'samples_settings.json')
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        new = json.loads(json.dumps(settings))
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(f'{folder} holds samples made with other settings ({", ".join(changed)} differ; see '
                             f'{meta_path}): set eval.folder to evaluate these settings elsewhere, delete the '
                             f'folder to resample, or rerun with the recorded settings')
    elif parallel.is_main_process():
        os.makedirs(folder, exist_ok=True)
        _atomic_json(meta_path, settings)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), SAMPLE_STREAM)
    shard = lambda i: os.path.join(folder, f'samples_{i}.npz')
    present = np.array([os.path.exists(shard(i)) for i in range(n_batches)])
    if jax.process_count() > 1:  # every process must run the same sampling calls: process 0's view decides
        present = np.asarray(multihost_utils.broadcast_one_to_all(present))
    todo = [i for i in range(n_batches) if not present[i]]
    if len(todo) < n_batches:
        logging.info('resuming: %d of %d sample batches already in %s', n_batches - len(todo), n_batches, folder)
    inverse = data.get_inverse_scaler(config.data.centered)
    times = []
    for j, i in enumerate(todo):
        t0 = time.perf_counter()
        x, nfe = sample_fn(params, jax.random.fold_in(key, i))  # batch i's key alone decides its samples
        images = _to_uint8(inverse(_gather(x)))[:ev.num_samples - i * ev.batch_size]
        if parallel.is_main_process():
            _atomic_npz(shard(i), samples=images, nfe=np.asarray(nfe, np.float64))
        times.append(time.perf_counter() - t0)
        # The first batch of a run includes compilation: the rate is measured on the later ones when there are any.
        per_batch = float(np.mean(times[1:] or times))
        logging.info('sample batch %d/%d (%d to go)  %.1f samples/s  ETA %s', i + 1, n_batches, len(todo) - j - 1,
                     ev.batch_size / per_batch, _eta(per_batch, len(todo) - j - 1))
    return {'batches': n_batches, 'batches_sampled_this_run': len(todo), 'sampling_wall_s': float(sum(times)),
            'samples_per_s': ev.batch_size / float(np.mean(times[1:] or times)) if times else None}


def _load_samples(folder, n_batches):
    """(uint8 samples (N, H, W, C), NFE per sample averaged over batches) from the shards of `folder`."""
    images, nfes = [], []
    for i in range(n_batches):
        with np.load(os.path.join(folder, f'samples_{i}.npz')) as f:
            images.append(f['samples'])
            nfes.append(float(f['nfe']))
    return np.concatenate(images), float(np.mean(nfes))


def sample_metrics(config, workdir, images) -> dict:
    """Frechet distances (pixel, digits classifier, Inception), IS and KID of uint8 samples (N, H, W, C)."""
    proxies = proxy.proxy_feature_fns(config, workdir)
    inception_fn = _inception_fn(config)
    out = {} if inception_fn else {'inception_metrics': 'skipped: no FID Inception weights (eval.inception_weights)'}
    if not proxies and inception_fn is None:
        return out  # large images without Inception weights: no Frechet distance applies
    feats = _features(images, proxies, inception_fn)
    ref = _reference(config, workdir, proxies, inception_fn)
    out['reference'] = f'{ref_stats_path(config, workdir)} ({ref["split"]} split, {int(ref["num_examples"])} images)'
    if 'digits_classifier' in proxies:
        out['digits_classifier_test_accuracy'] = proxies['digits_classifier'].test_accuracy
    for name in ('pixel', 'digits_classifier', 'inception'):
        if name in feats:
            mu, sigma = fid.feature_stats(feats[name])
            key = 'fid' if name == 'inception' else f'{name}_fd'
            out[key] = fid.frechet_distance(mu, sigma, ref[f'{name}_mu'], ref[f'{name}_sigma'])
    if inception_fn is not None:
        out['inception_score'], out['inception_score_std'] = fid.inception_score(
            feats['inception_logits'], splits=min(10, len(images)))
        out['kid'], out['kid_std'] = fid.kernel_inception_distance(feats['inception'], ref['inception_features'])
    return out


def bits_per_dim(config, exp: Experiment, stats, params, mesh) -> dict:
    """Mean bits/dim (8-bit scale) on eval.bpd_dataset by the implicit-score probability-flow ODE."""
    ev = config.eval
    x01 = proxy.split_images(config, ev.bpd_dataset, max_examples=ev.bpd_num_examples)
    bs, K = ev.batch_size, exp.num_levels
    scaler = data.get_scaler(config.data.centered)
    sharding = parallel.batch_sharding(mesh)

    @jax.jit
    def batch_bpd(params, key, x01):
        kd, kl = jax.random.split(key)
        x = scaler(likelihood.dequantize(kd, x01))
        scores = [exp.score_fn(params, k) for k in range(K + 1)]
        logp, _, n_evals = likelihood.log_likelihood(kl, x, exp.sde, scores, exp.chain, stats, exp.cutoffs,
                                                     eps=ev.likelihood_eps, rtol=ev.ode_rtol, atol=ev.ode_atol)
        return likelihood.bits_per_dim(logp, math.prod(x.shape[1:]), config.data.centered), n_evals

    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), BPD_STREAM)
    n_batches = math.ceil(len(x01) / bs)
    total = ev.bpd_num_repeats * n_batches
    values, n_evals, t_start = [], [], time.perf_counter()
    for r in range(ev.bpd_num_repeats):
        for i in range(n_batches):
            chunk = x01[i * bs:(i + 1) * bs]
            # Pad to the compiled batch size (and to a multiple of the devices); padded rows are dropped.
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], bs - len(chunk), 0)])
            x = jax.make_array_from_callback(padded.shape, sharding, lambda idx: padded[idx])
            bpd, n = batch_bpd(params, jax.random.fold_in(jax.random.fold_in(key, r), i), x)
            values.append(_gather(bpd)[:len(chunk)])
            n_evals.append(int(n))
            done = r * n_batches + i + 1
            per_batch = (time.perf_counter() - t_start) / done
            logging.info('bits/dim batch %d/%d  %.1f examples/s  ETA %s  running mean %.4f', done, total,
                         len(chunk) / per_batch, _eta(per_batch, total - done), float(np.mean(np.concatenate(values))))
    values = np.concatenate(values)
    return {'bpd': float(values.mean()), 'bpd_stderr': float(values.std() / math.sqrt(len(values))),
            'bpd_dataset': ev.bpd_dataset, 'bpd_num_examples': len(x01), 'bpd_num_repeats': ev.bpd_num_repeats,
            'bpd_ode_nfe_per_batch': float(np.mean(n_evals)), 'bpd_wall_s': time.perf_counter() - t_start}


def evaluate(config, workdir):
    """Sample, score and (optionally) measure bits/dim for each archived step in the eval range -> [metrics dicts]."""
    ev = config.eval
    if not (ev.enable_sampling or ev.enable_bpd):
        raise ValueError('nothing to do: set eval.enable_sampling and/or eval.enable_bpd')
    mesh = parallel.make_mesh()
    parallel.check_batch_size(ev.batch_size, mesh, 'eval.batch_size')
    exp = eval_experiment(config)  # chain / cutoff errors surface here, before anything loads or compiles
    dirs = level_workdirs(config, workdir, exp.num_levels)
    steps = eval_steps(config, dirs[0])
    stats = exp.load_stats(workdir, write=parallel.is_main_process())
    sample_fn, nfe_kind = make_sample_fn(exp, stats, mesh, ev.batch_size) if ev.enable_sampling else (None, None)
    logging.info('evaluating steps %s of %s, %s', steps, dirs[0],
                 f'{exp.num_levels}-level subspace chain, cutoffs {exp.cutoffs}' if exp.num_levels else 'full space')
    results = []
    for step in steps:
        params, sources = load_level_params(config, dirs, step, mesh)
        folder = os.path.join(workdir, ev.get('folder', 'eval'), f'step_{step}')
        os.makedirs(folder, exist_ok=True)
        metrics = {'step': step, 'checkpoints': sources,
                   'space': f'{exp.num_levels}-level subspace, cutoffs {list(exp.cutoffs)}' if exp.num_levels
                   else 'full'}
        if ev.enable_sampling:
            settings = _sample_settings(config, exp, sources)
            metrics.update(method=config.sampling.method, num_samples=ev.num_samples, nfe_kind=nfe_kind,
                           **_sample(config, sample_fn, params, folder, settings))
            if jax.process_count() > 1:  # every process reads the shards that process 0 wrote
                multihost_utils.sync_global_devices(f'eval samples of step {step} written')
            images, metrics['nfe_per_sample'] = _load_samples(folder, metrics['batches'])
            grid = os.path.join(folder, 'samples_grid.png')
            if parallel.is_main_process() and not os.path.exists(grid):
                save_image_grid(images[:ev.batch_size] / 255., grid)
            metrics.update(sample_metrics(config, workdir, images))
        if ev.enable_bpd:
            metrics.update(bits_per_dim(config, exp, stats, params, mesh))
        if parallel.is_main_process():
            _atomic_json(os.path.join(folder, 'metrics.json'), metrics)
        logging.info('step %d: %s', step, ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                                                   for k, v in metrics.items() if k != 'checkpoints'))
        results.append(metrics)
    return results
