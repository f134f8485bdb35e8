"""Download-free sample-quality features: pixels, and a small classifier trained here on a labelled split.

FID needs the 2015 Inception weights (a download), and on small grayscale images its features say little:
Inception was trained on 299 px natural photographs. For labelled small-image datasets (the offline
digits, MNIST, Fashion-MNIST) we use the same Frechet distance (and KID) in the features of a classifier
trained on the dataset itself, as is common for MNIST-like data: its features encode what a digit or a
garment looks like, so samples that are not recognisable move far from the data. Same formula as FID,
other features: the numbers are comparable between runs of this project, never with published FIDs.

Two plain-JAX architectures, trained by one deterministic routine (Adam, fixed key, fixed steps):
- 'mlp' (the digits, 8x8 at heart): S*S pixels -> 128 -> 64 tanh -> classes, full-batch;
- 'cnn' (28 / 32 px sets): two 3x3 conv + ReLU + 2x2 average-pool stages (32, 64 channels), then
  128 tanh -> classes, minibatches of `batch_size` in a fixed-key order.
Features are the last tanh layer: unlike ReLU features they are rarely exactly zero, so their covariance
is well conditioned for the Frechet distance.

The pixel Frechet distance uses the flattened [0,1] pixels as features; it measures only first and
second moments of the pixels, so it applies to small images only (d <= PIXEL_FD_MAX_DIM).
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from subspace_diffusion import compiler

PIXEL_FD_MAX_DIM = 4096  # covariance d x d: 64x64x1 or 32x32x3 still fit in memory and sqrtm time
PROGRESS_EVERY = 500  # classifier training steps between progress reports
FIRST_REPORT = 50  # the first report comes early: its rate gives the training's ETA within seconds


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """Architecture ('mlp' or 'cnn') and its training: Adam steps, learning rate, minibatch (0 = full batch)."""

    kind: str
    steps: int
    learning_rate: float
    batch_size: int = 0
    num_classes: int = 10


# The digits' MLP (97.7% test accuracy at 16x16) and the CNN of the 28/32 px sets (accuracies in docs/evaluation.md).
MLP = ClassifierSpec('mlp', steps=500, learning_rate=3e-3)
CNN = ClassifierSpec('cnn', steps=3000, learning_rate=1e-3, batch_size=128)
MLP_HIDDEN = (128, 64)
CNN_CHANNELS, CNN_HIDDEN = (32, 64), 128


def pixel_fd_applies(shape) -> bool:
    """Whether the pixel Frechet distance is computed for images of per-example `shape` (H, W, C)."""
    return math.prod(shape) <= PIXEL_FD_MAX_DIM


def pixel_features(images) -> np.ndarray:
    """(N, H, W, C) uint8 or [0,1] float -> (N, H*W*C) float32 in [0,1]."""
    images = np.asarray(images)
    x = images.astype(np.float32) / 255. if images.dtype == np.uint8 else images.astype(np.float32)
    return x.reshape(len(x), -1)


def _dense(key, a, b):
    """LeCun-normal weights (a, b), zero biases."""
    return jax.random.normal(key, (a, b)) / math.sqrt(a), jnp.zeros(b)


def init(spec: ClassifierSpec, key, shape) -> dict:
    """Fresh parameters for images of per-example `shape` (H, W, C)."""
    params = {}
    if spec.kind == 'mlp':
        sizes = (math.prod(shape),) + MLP_HIDDEN + (spec.num_classes,)
        for i, (k, a, b) in enumerate(zip(jax.random.split(key, len(sizes) - 1), sizes, sizes[1:])):
            params[f'w{i}'], params[f'b{i}'] = _dense(k, a, b)
        return params
    keys = jax.random.split(key, len(CNN_CHANNELS) + 2)
    c_in = shape[-1]
    for i, c in enumerate(CNN_CHANNELS):
        params[f'conv{i}'] = jax.random.normal(keys[i], (3, 3, c_in, c)) / math.sqrt(9 * c_in)
        params[f'conv{i}_b'] = jnp.zeros(c)
        c_in = c
    pooled = (shape[0] // 2 ** len(CNN_CHANNELS)) * (shape[1] // 2 ** len(CNN_CHANNELS)) * c_in
    params['w0'], params['b0'] = _dense(keys[-2], pooled, CNN_HIDDEN)
    params['w1'], params['b1'] = _dense(keys[-1], CNN_HIDDEN, spec.num_classes)
    return params


def features(spec: ClassifierSpec, params: dict, x01) -> jnp.ndarray:
    """(N, H, W, C) [0,1] images -> (N, D) tanh features (D = 64 for the MLP, 128 for the CNN)."""
    if spec.kind == 'mlp':
        h = x01.reshape(x01.shape[0], -1)
        for i in range(len(MLP_HIDDEN)):
            h = jnp.tanh(h @ params[f'w{i}'] + params[f'b{i}'])
        return h
    h = x01
    for i in range(len(CNN_CHANNELS)):
        h = jax.lax.conv_general_dilated(h, params[f'conv{i}'], (1, 1), 'SAME',
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params[f'conv{i}_b']
        b, hh, ww, c = h.shape
        h = jax.nn.relu(h).reshape(b, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))
    return jnp.tanh(h.reshape(h.shape[0], -1) @ params['w0'] + params['b0'])


def head(spec: ClassifierSpec, params: dict, feats) -> jnp.ndarray:
    """(N, D) tanh features of `features` -> (N, classes) logits."""
    n = len(MLP_HIDDEN) if spec.kind == 'mlp' else 1
    return feats @ params[f'w{n}'] + params[f'b{n}']


def logits(spec: ClassifierSpec, params: dict, x01) -> jnp.ndarray:
    """(N, H, W, C) [0,1] images -> (N, classes)."""
    return head(spec, params, features(spec, params, x01))


def train(spec: ClassifierSpec, images, labels, seed: int = 0, on_step=None) -> dict:
    """Parameters trained by Adam for spec.steps steps on (N, H, W, C) [0,1] images and integer labels (N,).

    `on_step(done)`, if given, is called after FIRST_REPORT steps, every PROGRESS_EVERY steps and at the end (the
    caller reports progress).

    Deterministic for a seed: full batch when spec.batch_size is 0 or >= N, else minibatches in the order of a
    seeded permutation per epoch. A Python loop of compiled steps with the batch as an argument: XLA:CPU runs a
    backward pass inside a scan's while loop many times slower, and a whole dataset closed over as a constant
    bloats the program.
    """
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    tx = optax.adam(spec.learning_rate)
    n = len(images)
    full = not spec.batch_size or spec.batch_size >= n

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(logits(spec, p, xb), yb).mean()

    @compiler.jit
    def step(p, opt, xb, yb):
        updates, opt = tx.update(jax.grad(loss)(p, xb, yb), opt, p)
        return optax.apply_updates(p, updates), opt

    params = init(spec, jax.random.PRNGKey(seed), images.shape[1:])
    opt = tx.init(params)
    for i in range(spec.steps):
        if full:
            xb, yb = images, labels
        else:
            epoch, j = divmod(i, n // spec.batch_size)  # whole minibatches per epoch
            if j == 0:
                order = np.random.default_rng([seed, epoch]).permutation(n)
            rows = order[j * spec.batch_size:(j + 1) * spec.batch_size]
            xb, yb = images[rows], labels[rows]
        params, opt = step(params, opt, xb, yb)
        if on_step is not None and ((i + 1) % PROGRESS_EVERY == 0 or i + 1 in (FIRST_REPORT, spec.steps)):
            jax.block_until_ready(params)
            on_step(i + 1)
    return jax.device_get(params)


def accuracy(spec: ClassifierSpec, params: dict, images, labels, batch: int = 1000) -> float:
    """Share of (N, H, W, C) [0,1] images classified as their label."""
    fn = compiler.jit(lambda x: jnp.argmax(logits(spec, params, x), axis=1))
    hits = sum(int(np.sum(np.asarray(fn(jnp.asarray(images[i:i + batch], jnp.float32))) == labels[i:i + batch]))
               for i in range(0, len(images), batch))
    return hits / len(images)
