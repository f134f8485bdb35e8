"""Sample-quality metrics that need no download: Frechet distances in pixel space and in a digits classifier.

FID needs the 2015 Inception weights (a download) and on 16x16 grayscale digits its features say
little anyway: Inception was trained on 299 px natural photographs. For the offline digits dataset
we therefore use the same Frechet distance in the feature space of a classifier trained on that
dataset itself, as is common for MNIST-like data: its features encode what a digit looks like
(class, stroke), so samples that are not recognisable digits move far from the data.

The classifier is a 2-hidden-layer MLP (S*S pixels -> 128 -> 64 tanh -> 10) in plain JAX, trained with
full-batch Adam for a fixed number of steps from a fixed key on the same train split as the diffusion
model: deterministic, a few seconds on a CPU, cached as .npz in the workdir. An MLP suffices for digits
that are 8x8 at heart (97.7% test accuracy at 16x16) and its tanh features have a well-conditioned
covariance for the Frechet distance (ReLU features are often exactly zero). Features are the 64 tanh
activations; a convolutional network would cost more compile time than these small images need.

The pixel Frechet distance uses the flattened [0,1] pixels as features; it only measures first and
second moments of the pixels, so it applies to small images only (d <= PIXEL_FD_MAX_DIM).
"""
import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from subspace_diffusion import data
from subspace_diffusion.files import atomic_npz

PIXEL_FD_MAX_DIM = 4096  # covariance d x d: 64x64x1 or 32x32x3 still fit in memory and sqrtm time
HIDDEN = (128, 64)
TRAIN_STEPS = 500
LEARNING_RATE = 3e-3


def pixel_fd_applies(shape) -> bool:
    """Whether the pixel Frechet distance is computed for images of per-example `shape` (H, W, C)."""
    return math.prod(shape) <= PIXEL_FD_MAX_DIM


def pixel_features(images) -> np.ndarray:
    """(N, H, W, C) uint8 or [0,1] float -> (N, H*W*C) float32 in [0,1]."""
    images = np.asarray(images)
    x = images.astype(np.float32) / 255. if images.dtype == np.uint8 else images.astype(np.float32)
    return x.reshape(len(x), -1)


def split_batches(data_settings, split, batch_size=256, max_examples=0):
    """Yields float32 (B, S, S, C) batches in [0,1] of a dataset split, in the pipeline's fixed order, no flips."""
    inverse = data.get_inverse_scaler(data_settings.centered)
    seen = 0
    for b in data.get_dataset(data_settings, split, batch_size, augment=False, repeat=False):
        x = np.asarray(inverse(b['image']), np.float32)
        if max_examples:
            x = x[:max_examples - seen]
        seen += len(x)
        yield x
        if max_examples and seen >= max_examples:
            return


def split_images(data_settings, split, max_examples=0) -> np.ndarray:
    """The images of a dataset split (at most max_examples, 0 = all) as one float32 (N, S, S, C) array in [0,1]."""
    return np.concatenate(list(split_batches(data_settings, split, max_examples=max_examples)))


def digits_split(data_settings, split):
    """(images (N, S, S, 1) in [0,1] at data.image_size, labels (N,)) of the project's digits split."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    # data.py owns the split; at the native 8x8 size its images are scikit-learn's exactly (an identity
    # resize), so labels are recovered by exact lookup instead of repeating the split's definition here.
    # Pixels are k/16: rounding makes the key immune to the scaler's float round trip.
    label_of = {img.astype(np.uint8).tobytes(): int(y) for img, y in zip(digits.images, digits.target)}
    native = np.round(split_images(dataclasses.replace(data_settings, image_size=8), split) * 16).astype(np.uint8)
    try:
        labels = np.array([label_of[x[..., 0].tobytes()] for x in native])
    except KeyError as e:
        raise ValueError('digits images no longer match scikit-learn\'s at 8x8: data.py changed the digits '
                         'preprocessing; update metrics/proxy.py to match') from e
    return split_images(data_settings, split), labels


def _init(key, d_in):
    """Fresh MLP parameters {w_i, b_i} (LeCun-normal weights, zero biases)."""
    sizes = (d_in,) + HIDDEN + (10,)
    params = {}
    for i, (k, a, b) in enumerate(zip(jax.random.split(key, len(sizes) - 1), sizes, sizes[1:])):
        params[f'w{i}'] = jax.random.normal(k, (a, b)) / math.sqrt(a)
        params[f'b{i}'] = jnp.zeros(b)
    return params


def _hidden(params, x):
    """(N, d) [0,1] pixels -> (N, HIDDEN[-1]) tanh features."""
    h = x
    for i in range(len(HIDDEN)):
        h = jnp.tanh(h @ params[f'w{i}'] + params[f'b{i}'])
    return h


def _logits(params, x):
    n = len(HIDDEN)
    return _hidden(params, x) @ params[f'w{n}'] + params[f'b{n}']


def train_digits_classifier(data_settings):
    """(params, test accuracy) of the MLP trained on the digits train split at data.image_size."""
    x, y = digits_split(data_settings, 'train')
    x_test, y_test = digits_split(data_settings, 'test')
    x, x_test = pixel_features(x), pixel_features(x_test)
    tx = optax.adam(LEARNING_RATE)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(_logits(p, x), y).mean()

    def step(carry, _):
        p, opt = carry
        grads = jax.grad(loss)(p)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), None

    params = _init(jax.random.PRNGKey(0), x.shape[1])
    (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, TRAIN_STEPS))(params)
    accuracy = float(np.mean(np.argmax(np.asarray(_logits(params, x_test)), 1) == y_test))
    return jax.device_get(params), accuracy


class DigitsFeatures:
    """Feature extractor of the cached digits classifier: __call__ (N, S, S, 1) images -> (N, 64) features."""

    def __init__(self, data_settings, cache_dir):
        size = data_settings.image_size
        path = os.path.join(cache_dir, f'proxy_classifier_digits_{size}.npz')
        if os.path.exists(path):
            with np.load(path) as f:
                self.params = {k: jnp.asarray(f[k]) for k in f.files if k != 'test_accuracy'}
                self.test_accuracy = float(f['test_accuracy'])
        else:
            self.params, self.test_accuracy = train_digits_classifier(data_settings)
            atomic_npz(path, test_accuracy=self.test_accuracy, **self.params)  # concurrent runs never see half
            logging.info('trained the proxy digits classifier (test accuracy %.3f), cached at %s',
                         self.test_accuracy, path)
        self._fn = jax.jit(_hidden)

    def __call__(self, images) -> np.ndarray:
        return np.asarray(self._fn(self.params, jnp.asarray(pixel_features(images))))


def proxy_feature_fns(data_settings, cache_dir) -> dict:
    """{name: images (N, H, W, C) -> features (N, D)} of the proxy metrics that apply to the data."""
    fns = {}
    if pixel_fd_applies(data_settings.shape):
        fns['pixel'] = pixel_features
    if data_settings.dataset == 'digits':
        fns['digits_classifier'] = DigitsFeatures(data_settings, cache_dir)
    return fns
