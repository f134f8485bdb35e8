"""Sample quality against a split's reference statistics: FID / IS / KID, and the download-free Frechet distances.

A `Scorer` is built before anything is sampled, so missing or wrong weights show at once: the FID
Inception when eval.inception_weights names a file (read without torch and without unpickling, or an
.npz), the classifier of a labelled small-image dataset (trained here once, cached in the workdir), and
the pixel features of small images. The classifier and the reference statistics are cached in the workdir
under names keyed on the split's content (data.content_id: the dataset, what its files hold, size, padding,
channels), so the same images anywhere reuse them and other data are scored against statistics of their own.
A shipped model's working copy (run/shipped.py) carries both for the data it was trained on, found by the
content its manifest records when the data are not here: its evaluation needs no dataset.
"""
import glob
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from subspace_diffusion import compiler
from subspace_diffusion.formats import pth
from subspace_diffusion.formats.files import (
    FileProblem,
    atomic_npz,
    check_file,
    read_npz,
)
from subspace_diffusion.formats.images import to_uint8
from subspace_diffusion.metrics import classifier, fid, inception
from subspace_diffusion.run import data, parallel, shipped
from subspace_diffusion.run.progress import fmt_duration
from subspace_diffusion.run.settings import Settings

KID_REFERENCE_FEATURES = 10_000  # reference features kept for KID (its subsets hold 1,000)
INCEPTION_BATCH = 200  # images per Inception call (299 px activations dominate memory)
CLASSIFIERS = {'digits': classifier.MLP, 'mnist': classifier.CNN, 'fashionmnist': classifier.CNN}
KID_FEATURES = ('classifier', 'inception')  # feature sets whose KID is reported
# Below this test accuracy (chance is 10%) the classifier has not learned the classes, most likely from damaged or
# foreign labels: every sample would look alike in its features, and its Frechet distance would call garbage good.
MIN_CLASSIFIER_ACCURACY = 0.5
MIN_REFERENCE_IMAGES = 2  # a covariance needs two; a meaningful one far more than the feature dimension
CLASSIFIER_PREFIX = 'proxy_classifier_'  # <prefix><dataset>_<size>_<content id of the training split>.npz


def _batched(fn, images, batch):
    """fn over (N, ...) in fixed-size batches (the last padded, so one compiled shape) -> list of (N, ...) outputs."""
    outs = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        outs.append([np.asarray(o)[:len(chunk)] for o in fn(parallel.pad_rows(chunk, batch))])
    return [np.concatenate(parts) for parts in zip(*outs)]


def read_inception(path) -> dict:
    """The FID Inception variables from eval.inception_weights: pytorch-fid's .pth (no torch needed) or an .npz."""
    fix = (f'point config.eval.inception_weights at pytorch-fid\'s {os.path.basename(inception.FID_WEIGHTS_URL)} '
           f'({inception.FID_WEIGHTS_URL}), or leave it empty to skip FID / IS / KID')
    check_file(path, 'FID Inception weights', fix)
    if path.endswith('.npz'):
        state_dict = read_npz(path, 'FID Inception weights', fix)
    else:
        try:
            state_dict = pth.load(path)
        except pth.PthError as e:
            raise FileProblem(f'FID Inception weights: {e}; {fix}') from None
        if not isinstance(state_dict, dict):
            raise FileProblem(f'FID Inception weights {path} hold a {type(state_dict).__name__}, not a state_dict: '
                              f'{fix}')
    return inception.params_from_state_dict(state_dict, f'FID Inception weights {path}')


def _finite(ref: dict) -> bool:
    """Whether every numeric array of a set of reference statistics is finite."""
    return all(np.isfinite(v).all() for v in ref.values() if np.issubdtype(v.dtype, np.number))


class ClassifierFeatures:
    """The dataset's cached classifier as a feature extractor: __call__ uint8 (N, H, W, C) -> (N, D); cached in
    `workdir` under the content id `train_id` of the training split (default: data.content_id of its files)."""

    def __init__(self, settings: Settings, workdir, train_id: Optional[str] = None):
        d = settings.data
        self.spec = CLASSIFIERS[d.dataset]
        train_id = train_id or data.content_id(d, 'train')
        path = os.path.join(workdir, f'{CLASSIFIER_PREFIX}{d.dataset}_{d.image_size}_{train_id}.npz')
        fix = 'delete it to train the classifier again'
        try:
            arrays = read_npz(path, 'cached classifier', fix, required=('test_accuracy',)) \
                if os.path.exists(path) else None
        except FileProblem as e:
            logging.warning('%s; training it again', e)
            arrays = None
        if arrays is not None:
            self.test_accuracy = float(arrays.pop('test_accuracy'))
            self.params = {k: jnp.asarray(v) for k, v in arrays.items()}
            self._check_accuracy(d, f', then delete the cached classifier {path}')
        else:
            self.params, self.test_accuracy = self._train(d, path)
            self._check_accuracy(d, '')  # not cached: a fixed data set trains it anew
            if parallel.is_main_process():
                atomic_npz(path, test_accuracy=self.test_accuracy, **self.params)
            logging.info('trained the %s classifier of %s (test accuracy %.4f), cached at %s', self.spec.kind,
                         d.dataset, self.test_accuracy, path)
        self._fn = compiler.jit(lambda x: classifier.features(self.spec, self.params, x))
        self._head = compiler.jit(lambda f: classifier.head(self.spec, self.params, f))

    def _check_accuracy(self, d, then: str):
        """Refuse a classifier that has not learned the classes: distances in its features would mean nothing."""
        if self.test_accuracy < MIN_CLASSIFIER_ACCURACY:
            raise ValueError(f'the {self.spec.kind} classifier of {d.dataset} classifies only {self.test_accuracy:.1%} '
                             f'of the test images right (the floor for its Frechet distance and KID is '
                             f'{MIN_CLASSIFIER_ACCURACY:.0%}, chance 10%), so it would call any samples good: the '
                             f'labels of {d.data_dir or d.dataset} are damaged or foreign, or the images too small to '
                             f'tell the classes apart; use the canonical label files or a larger data.image_size{then}')

    def _train(self, d, path):
        """(parameters, test accuracy) of the classifier trained on the training split; the log says first why no
        cached one serves (`path` is absent) and, after the first steps, how long it takes."""
        x, y = data.labelled_split(d, 'train')  # a missing dataset stops here, before training is announced
        x_test, y_test = data.labelled_split(d, 'test')
        others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(os.path.dirname(path),
                                                                            f'{CLASSIFIER_PREFIX}*.npz')))
        why = (f'{", ".join(others)} {"was" if len(others) == 1 else "were"} trained on other images or at another '
               f'size, padding or channel count' if others else 'none is cached')
        logging.info('no classifier of these training images (%s) in %s: %s; training the %s classifier of %s for '
                     'the classifier Frechet distance, %d steps (the ETA follows after %d) ...', os.path.basename(path),
                     os.path.dirname(path) or '.', why, self.spec.kind, d.dataset, self.spec.steps,
                     classifier.FIRST_REPORT)
        start = time.perf_counter()

        def report(done):
            rate = done / (time.perf_counter() - start)
            logging.info('classifier step %d/%d  %.1f it/s  ETA %s', done, self.spec.steps, rate,
                         fmt_duration((self.spec.steps - done) / rate))

        params = classifier.train(self.spec, x, y, seed=0, on_step=report)
        return params, classifier.accuracy(self.spec, params, x_test, y_test)

    def __call__(self, images) -> np.ndarray:
        x = classifier.pixel_features(images).reshape(np.shape(images))
        return _batched(lambda b: (self._fn(jnp.asarray(b)),), x, 1000)[0]

    def predict(self, feats) -> np.ndarray:
        """The class (N,) it sees in images whose features (N, D) this extractor computed."""
        return _batched(lambda b: (self._head(jnp.asarray(b)),), feats, 1000)[0].argmax(axis=1)


class Scorer:
    """Every feature set that applies to the data, loaded before sampling; `score(images)` against the reference."""

    def __init__(self, settings: Settings, workdir):
        self.settings, self.workdir = settings, workdir
        self.missing = data.data_missing(settings.data)
        if self.missing and shipped.recorded_digest(workdir, 'train'):
            logging.info('config.data.data_dir=%r is not here: scoring with the classifier and the reference '
                         'statistics this model carries for the data it was trained on', settings.data.data_dir)
        self.features = {}
        if classifier.pixel_fd_applies(settings.data.shape):
            self.features['pixel'] = classifier.pixel_features
        if settings.data.dataset in CLASSIFIERS:
            self.classifier = ClassifierFeatures(settings, workdir, self._content_id('train'))
            self.features['classifier'] = self.classifier
        self.inception = None
        if settings.eval.inception_weights:
            self.inception = inception.inception_fn(read_inception(settings.eval.inception_weights))
        else:
            logging.info('FID / IS / KID skipped: no FID Inception weights (config.eval.inception_weights; see %s)',
                         inception.FID_WEIGHTS_URL)

    @property
    def names(self) -> list:
        """The feature sets in use."""
        return sorted(self.features) + (['inception'] if self.inception is not None else [])

    def extract(self, images) -> dict:
        """{name: (N, D) features} of uint8 images (N, H, W, C) for every feature set in use."""
        feats = {name: fn(images) for name, fn in self.features.items()}
        if self.inception is not None:
            feats['inception'], feats['inception_logits'] = _batched(self.inception, images, INCEPTION_BATCH)
        return feats

    def _content_id(self, split: str) -> str:
        """data.content_id of a split, by what the workdir's manifest records of it when the data are not here."""
        return data.content_id(self.settings.data, split, shipped.recorded_digest(self.workdir, split))

    def _cache_path(self, prefix: str = 'ref_stats') -> str:
        """<workdir>/<prefix>_<dataset>_<size>_<content id>.npz: the reference statistics this workdir computes."""
        d = self.settings.data
        return os.path.join(self.workdir, f'{prefix}_{d.dataset}_{d.image_size}_'
                                          f'{self._content_id(self.settings.eval.ref_split)}.npz')

    def ref_stats_path(self) -> str:
        """eval.ref_stats_path (read, never written), or the workdir's cache."""
        return self.settings.eval.ref_stats_path or self._cache_path()

    def write_reference(self) -> dict:
        """Reference statistics {name}_mu, {name}_sigma (and KID features) of split eval.ref_split, written to the
        workdir's cache (an explicit eval.ref_stats_path is only read)."""
        d, split = self.settings.data, self.settings.eval.ref_split
        logging.info('reference features of %s/%s (%s) ...', d.dataset, split, ', '.join(self.names))
        parts, n, t0 = [], 0, time.perf_counter()
        for i, batch in enumerate(data.split_batches(d, split)):  # streamed: only features stay in memory
            parts.append(self.extract(to_uint8(batch)))
            n += len(batch)
            if (i + 1) % 20 == 0:
                logging.info('reference features: %d images (%.0f images/s)', n, n / (time.perf_counter() - t0))
        if n < MIN_REFERENCE_IMAGES:
            raise ValueError(f'the {split} split of {d.dataset} holds {n} image(s): reference statistics (a mean and a '
                             f'covariance) need at least {MIN_REFERENCE_IMAGES}, and a meaningful distance thousands: '
                             f'use more images')
        feats = {name: np.concatenate([p[name] for p in parts]) for name in parts[0] if name != 'inception_logits'}
        arrays = {'split': np.array(split), 'num_examples': np.array(n)}
        for name, f in feats.items():
            arrays[f'{name}_mu'], arrays[f'{name}_sigma'] = fid.feature_stats(f)
            if name in KID_FEATURES:
                arrays[f'{name}_features'] = f[:KID_REFERENCE_FEATURES]
        path = self._cache_path()
        if parallel.is_main_process():
            atomic_npz(path, **arrays)
            logging.info('reference statistics of %s/%s (%d images in %s) written to %s', d.dataset, split, n,
                         fmt_duration(time.perf_counter() - t0), path)
        return arrays

    def reference(self) -> dict:
        """Reference statistics for every feature set in use: eval.ref_stats_path, or the workdir's cache (computed
        as --mode=fid_stats does when absent, incomplete or damaged, and the log says so). Without the data, a cache
        of means and covariances alone (what a shipped model carries) serves the Frechet distances, and KID is
        skipped."""
        needed = [f'{n}_mu' for n in self.names] + [f'{n}_features' for n in self.names if n in KID_FEATURES]
        if self.settings.eval.ref_stats_path:
            fix = ('point config.eval.ref_stats_path at statistics written by --mode=fid_stats with the same feature '
                   'sets, or leave it empty to compute them into the workdir')
            ref = read_npz(self.settings.eval.ref_stats_path, 'reference statistics', fix,
                           required=('split', 'num_examples', *needed))
            if not _finite(ref):
                raise FileProblem(f'reference statistics {self.settings.eval.ref_stats_path} hold values that are not '
                                  f'finite (written from too few images?): {fix}')
            return ref
        path = self._cache_path()
        if not os.path.exists(path):
            return self._recompute(f'no reference statistics at {path}: computing them (main.py --mode=fid_stats '
                                   f'does this alone)')
        try:
            ref = read_npz(path, 'reference statistics', 'delete it to compute them again',
                           required=('split', 'num_examples'))
        except FileProblem as e:
            return self._recompute(f'{e}; computing them again', warn=True)
        if not _finite(ref):
            return self._recompute(f'{path} holds values that are not finite: computing the reference statistics '
                                   f'again', warn=True)
        lacking = [k for k in needed if k not in ref]
        if not lacking or self.missing and all(k.endswith('_features') for k in lacking):
            return ref
        return self._recompute(f'{path} lacks {lacking}: recomputing the reference statistics')

    def _recompute(self, why: str, warn: bool = False) -> dict:
        """write_reference, after `why` is logged (a warning for a damaged cache); with the data missing, the one
        line of how to get them instead."""
        if self.missing:
            raise FileNotFoundError(self.missing)
        (logging.warning if warn else logging.info)('%s', why)
        return self.write_reference()

    def class_reference(self) -> dict:
        """{'mu_<c>', 'sigma_<c>'}: classifier-feature statistics of each class of eval.ref_split, cached in the
        workdir as ref_class_stats_<dataset>_<size>_<content id>.npz."""
        path = self._cache_path('ref_class_stats')
        if os.path.exists(path):
            try:
                return read_npz(path, 'per-class reference statistics', 'delete it to compute them again')
            except FileProblem as e:
                logging.warning('%s; computing them again', e)
        images, labels = data.labelled_split(self.settings.data, self.settings.eval.ref_split)
        feats = self.classifier(to_uint8(images))
        arrays = {}
        for c in np.unique(labels):
            arrays[f'mu_{c}'], arrays[f'sigma_{c}'] = fid.feature_stats(feats[labels == c])
        if parallel.is_main_process():
            atomic_npz(path, **arrays)
        return arrays

    def _class_scores(self, feats, labels) -> dict:
        """Of classifier features (N, D) of class-conditional samples with requested labels (N,): the share the
        classifier assigns the requested class, and each requested class's classifier Frechet distance to that class
        of the reference split (and their mean)."""
        labels = np.asarray(labels)
        ref = self.class_reference()
        per_class = {}
        for c in np.unique(labels):
            if np.sum(labels == c) >= 2 and f'mu_{c}' in ref:
                mu, sigma = fid.feature_stats(feats[labels == c])
                per_class[str(int(c))] = fid.frechet_distance(mu, sigma, ref[f'mu_{c}'], ref[f'sigma_{c}'])
        out = {'requested_class_accuracy': float(np.mean(self.classifier.predict(feats) == labels)),
               'classifier_fd_per_class': per_class}
        if per_class:
            out['classifier_fd_class_mean'] = float(np.mean(list(per_class.values())))
        return out

    def score(self, images, labels=None) -> dict:
        """Frechet distances (pixel, classifier, Inception), KID and IS of uint8 samples (N, H, W, C); with the
        requested labels (N,) of class-conditional samples also their class metrics (`_class_scores`), from the
        same classifier features."""
        out = {} if self.inception else {'inception_metrics': 'skipped: no FID Inception weights (eval.inception_weights)'}
        if labels is not None and 'classifier' not in self.features:
            out['class_metrics'] = f'skipped: no classifier for {self.settings.data.dataset}'
        if not self.names:
            return out  # large images without Inception weights: no Frechet distance applies
        feats = self.extract(images)
        if labels is not None and 'classifier' in feats:
            out.update(self._class_scores(feats['classifier'], labels))
        ref = self.reference()
        out['reference'] = f'{self.ref_stats_path()} ({ref["split"]} split, {int(ref["num_examples"])} images)'
        if 'classifier' in feats:
            out['classifier_test_accuracy'] = self.classifier.test_accuracy
        for name in ('pixel', 'classifier', 'inception'):
            if name in feats:
                mu, sigma = fid.feature_stats(feats[name])
                key = 'fid' if name == 'inception' else f'{name}_fd'
                out[key] = fid.frechet_distance(mu, sigma, ref[f'{name}_mu'], ref[f'{name}_sigma'])
        for name in KID_FEATURES:
            key = 'kid' if name == 'inception' else f'{name}_kid'
            if name in feats and f'{name}_features' not in ref:
                out[key] = 'skipped: the reference statistics hold no KID features (the data would give them)'
            elif name in feats and len(images) >= 2:
                out[key], out[f'{key}_std'] = fid.kernel_distance(feats[name], ref[f'{name}_features'])
        if self.inception is not None:
            out['inception_score'], out['inception_score_std'] = fid.inception_score(
                feats['inception_logits'], splits=min(10, len(images)))
        return out
