"""Sample quality against a split's reference statistics (FID / IS / KID, proxy Frechet distances); --mode=fid_stats.

Reference statistics are cached in the workdir under a name keyed on the split's content (dataset,
files, size), so pointing the config at other data computes them anew instead of reusing stale ones.
FID / IS / KID need the FID Inception weights (a local file, eval.inception_weights); the proxies of
metrics/proxy.py (pixel Frechet distance, a digits classifier's) need no download.
"""
import os
import time

import numpy as np
from absl import logging

from subspace_diffusion import data, parallel
from subspace_diffusion.files import atomic_npz
from subspace_diffusion.metrics import fid, inception, proxy
from subspace_diffusion.progress import fmt_duration
from subspace_diffusion.settings import Settings

KID_REFERENCE_FEATURES = 10_000  # reference Inception features kept for KID (its subsets hold 1,000)
INCEPTION_BATCH = 200  # images per Inception call (299 px activations dominate memory)


def ref_stats_path(settings: Settings, workdir) -> str:
    """eval.ref_stats_path, or <workdir>/ref_stats_<dataset>_<size>_<content id>.npz."""
    d, ev = settings.data, settings.eval
    name = f'ref_stats_{d.dataset}_{d.image_size}_{data.content_id(d, ev.ref_split)}.npz'
    return ev.ref_stats_path or os.path.join(workdir, name)


def inception_fn(settings: Settings):
    """The FID Inception (images -> (pool, logits)), or None (logged: FID / IS / KID need local weights)."""
    try:
        return inception.get_inception_fn(settings.eval.inception_weights)
    except inception.InceptionWeightsMissing as e:
        logging.info('FID / IS / KID skipped (eval.inception_weights=%r): %s', settings.eval.inception_weights, e)
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


def _features(images, proxies, inception) -> dict:
    """{name: (N, D) features} of uint8 images (N, H, W, C) for every metric that applies."""
    feats = {name: fn(images) for name, fn in proxies.items()}
    if inception is not None:
        feats['inception'], feats['inception_logits'] = _batched(inception, images, INCEPTION_BATCH)
    return feats


def to_uint8(x01) -> np.ndarray:
    """[0, 1] floats -> uint8 pixels (as images are stored and scored)."""
    return np.round(np.clip(np.asarray(x01, np.float32), 0., 1.) * 255).astype(np.uint8)


def fid_stats(settings: Settings, workdir) -> dict:
    """main.py --mode=fid_stats: write the reference statistics of split eval.ref_split -> {name}_mu, {name}_sigma."""
    return _write_reference(settings, workdir, proxy.proxy_feature_fns(settings.data, workdir),
                            inception_fn(settings))


def _write_reference(settings: Settings, workdir, proxies, inception) -> dict:
    split = settings.eval.ref_split
    names = sorted(proxies) + (['inception'] if inception is not None else [])
    logging.info('reference features of %s/%s (%s) ...', settings.data.dataset, split, ', '.join(names))
    parts, n, t0 = [], 0, time.perf_counter()
    for i, batch in enumerate(proxy.split_batches(settings.data, split)):  # streamed: only features stay in memory
        parts.append(_features(to_uint8(batch), proxies, inception))
        n += len(batch)
        if (i + 1) % 20 == 0:
            logging.info('reference features: %d images (%.0f images/s)', n, n / (time.perf_counter() - t0))
    feats = {name: np.concatenate([p[name] for p in parts]) for name in parts[0] if name != 'inception_logits'}
    arrays = {'split': np.array(split), 'num_examples': np.array(n)}
    for name, f in feats.items():
        arrays[f'{name}_mu'], arrays[f'{name}_sigma'] = fid.feature_stats(f)
    if 'inception' in feats:
        arrays['inception_features'] = feats['inception'][:KID_REFERENCE_FEATURES]
    path = ref_stats_path(settings, workdir)
    if parallel.is_main_process():
        atomic_npz(path, **arrays)
        logging.info('reference statistics of %s/%s (%d images in %s) written to %s', settings.data.dataset, split,
                     n, fmt_duration(time.perf_counter() - t0), path)
    return arrays


def _reference(settings: Settings, workdir, proxies, inception) -> dict:
    """Reference statistics for every feature set in use; computed as fid_stats does when absent or incomplete."""
    path = ref_stats_path(settings, workdir)
    names = list(proxies) + (['inception'] if inception is not None else [])
    if os.path.exists(path):
        with np.load(path) as f:
            ref = {k: f[k] for k in f.files}
        if all(f'{n}_mu' in ref for n in names):
            return ref
        logging.info('%s lacks %s: recomputing the reference statistics', path,
                     [n for n in names if f'{n}_mu' not in ref])
    else:
        logging.info('no reference statistics at %s: computing them (main.py --mode=fid_stats does this alone)', path)
    return _write_reference(settings, workdir, proxies, inception)


def sample_metrics(settings: Settings, workdir, images) -> dict:
    """Frechet distances (pixel, digits classifier, Inception), IS and KID of uint8 samples (N, H, W, C)."""
    proxies = proxy.proxy_feature_fns(settings.data, workdir)
    inception = inception_fn(settings)
    out = {} if inception else {'inception_metrics': 'skipped: no FID Inception weights (eval.inception_weights)'}
    if not proxies and inception is None:
        return out  # large images without Inception weights: no Frechet distance applies
    feats = _features(images, proxies, inception)
    ref = _reference(settings, workdir, proxies, inception)
    out['reference'] = f'{ref_stats_path(settings, workdir)} ({ref["split"]} split, {int(ref["num_examples"])} images)'
    if 'digits_classifier' in proxies:
        out['digits_classifier_test_accuracy'] = proxies['digits_classifier'].test_accuracy
    for name in ('pixel', 'digits_classifier', 'inception'):
        if name in feats:
            mu, sigma = fid.feature_stats(feats[name])
            key = 'fid' if name == 'inception' else f'{name}_fd'
            out[key] = fid.frechet_distance(mu, sigma, ref[f'{name}_mu'], ref[f'{name}_sigma'])
    if inception is not None:
        out['inception_score'], out['inception_score_std'] = fid.inception_score(
            feats['inception_logits'], splits=min(10, len(images)))
        out['kid'], out['kid_std'] = fid.kernel_inception_distance(feats['inception'], ref['inception_features'])
    return out
