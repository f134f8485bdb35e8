"""Nested subspace chains R^d = V_0 > V_1 > ... > V_K and their per-piece statistics (SPEC section 2).

A chain never builds the d x n_k basis U_k: each level step is an array op (pooling, a per-patch
matrix, or a small dense matrix for PCA). Level-k coordinates keep an image layout where the kind
allows it (pooling, patch-PCA), so a level-k network is an ordinary image network at H/2^k.

Conventions: `x` arrays carry a leading batch axis; `shapes[k]` is the per-example shape of level k.
`down1(x, k)` applies U_{k|k-1}^T (level k-1 -> k), `up1(y, k)` applies U_{k|k-1} (k -> k-1).

`Subspace` is a chain with its piece statistics and cutoff times, checked together once: the value the
sampler, the likelihood, the conditional sampler and the cutoff analysis take (None: full space).
"""
import dataclasses
import hashlib
import json
import math
from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from subspace_diffusion.core.sde import bcast


class Chain:
    """Base class: composite maps and piece projectors from the per-level `down1` / `up1`."""

    kind: str
    shapes: tuple

    @property
    def num_levels(self) -> int:
        """K, the number of levels below full space."""
        return len(self.shapes) - 1

    def dim(self, k: int) -> int:
        """n_k = dim V_k."""
        return math.prod(self.shapes[k])

    def piece_dim(self, j: int) -> int:
        """dim W_j = n_{j-1} - n_j."""
        return self.dim(j - 1) - self.dim(j)

    def down(self, x, k: int):
        """U_k^T x: full (B, *shapes[0]) -> level k (B, *shapes[k])."""
        for level in range(1, k + 1):
            x = self.down1(x, level)
        return x

    def up(self, y, k: int):
        """U_k y: level k (B, *shapes[k]) -> full (B, *shapes[0])."""
        for level in range(k, 0, -1):
            y = self.up1(y, level)
        return y

    def new_dirs(self, x, k: int):
        """(I - U_{k|k-1} U_{k|k-1}^T) x in level k-1 coordinates: the W_k component, (B, *shapes[k-1])."""
        return x - self.up1(self.down1(x, k), k)

    def piece(self, x, j: int):
        """(P_{j-1} - P_j) x in full space, x (B, *shapes[0])."""
        return self.up(self.new_dirs(self.down(x, j - 1), j), j - 1)

    def signature(self) -> dict:
        """What a statistics file must match: kind and level shapes (and, for fitted chains, their bases)."""
        return {'kind': self.kind, 'shapes': [list(s) for s in self.shapes]}

    def check_level(self, x, k):
        """Raise a clear error unless x is a batch of level-k arrays (B, *shapes[k])."""
        if tuple(x.shape[1:]) != tuple(self.shapes[k]):
            raise ValueError(f'expected level-{k} arrays of shape (B, {", ".join(map(str, self.shapes[k]))}), '
                             f'got {tuple(x.shape)}')


def _patchify(x, s):
    """(B, H, W, C) -> (B, H/s, W/s, s*s*C), patch entries ordered (row, col, channel)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // s, w // s, s * s * c)


def _unpatchify(x, s):
    """(B, h, w, s*s*C) -> (B, h*s, w*s, C), inverse of _patchify."""
    b, h, w, sc = x.shape
    c = sc // (s * s)
    x = x.reshape(b, h, w, s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * s, w * s, c)


def check_image_levels(image_shape, levels, factor, what):
    """Raise a clear error unless images (H, W, C) support `levels` levels of `what` by `factor`."""
    if len(image_shape) != 3:
        raise ValueError(f'{what} needs image data (H, W, C), got per-example shape {tuple(image_shape)}')
    if levels < 1:
        raise ValueError(f'{what} needs levels >= 1, got {levels}')
    h, w, _ = image_shape
    div = factor ** levels
    if h % div or w % div:
        raise ValueError(
            f'image size {h}x{w} cannot support {levels} {what} level(s) with factor {factor}: H and W must be '
            f'divisible by {factor}^{levels} = {div}. Use at most '
            f'{_max_levels(h, w, factor)} level(s) (subspace.levels) or resize the data (data.image_size).')


def _max_levels(h, w, factor):
    k = 0
    while h % factor ** (k + 1) == 0 and w % factor ** (k + 1) == 0:
        k += 1
    return k


class PoolingChain(Chain):
    """Image pooling chain: D(x) = s avgpool_sxs(x), U(y) = repeat_sxs(y) / s; s = 2 is the paper's choice."""

    kind = 'pooling'

    def __init__(self, image_shape, levels: int, factor: int = 2):
        check_image_levels(image_shape, levels, factor, 'pooling')
        h, w, c = image_shape
        self.factor = factor
        self.shapes = tuple((h // factor ** k, w // factor ** k, c) for k in range(levels + 1))

    def down1(self, x, k):
        """s avgpool_sxs: (B, h, w, C) -> (B, h/s, w/s, C)."""
        b, h, w, c = x.shape
        s = self.factor
        return x.reshape(b, h // s, s, w // s, s, c).sum(axis=(2, 4)) / s

    def up1(self, y, k):
        """repeat_sxs / s: (B, h, w, C) -> (B, s h, s w, C)."""
        s = self.factor
        return jnp.repeat(jnp.repeat(y, s, axis=1), s, axis=2) / s

    def signature(self) -> dict:
        """Kind, factor and level shapes."""
        return {**super().signature(), 'factor': self.factor}


class PatchChain(Chain):
    """Per-patch orthonormal maps: level k = patchify(level k-1, s) @ B_k with B_k (C s^2, C') orthonormal."""

    kind = 'patch_pca'

    def __init__(self, image_shape, patch: int, bases):
        check_image_levels(image_shape, len(bases), patch, 'patch-PCA')
        self.patch = patch
        self.bases = [jnp.asarray(b, jnp.float32) for b in bases]
        shapes = [tuple(image_shape)]
        for b in bases:
            h, w, c = shapes[-1]
            if b.shape[0] != c * patch * patch:
                raise ValueError(f'patch basis has {b.shape[0]} rows, expected C s^2 = {c * patch * patch}')
            shapes.append((h // patch, w // patch, b.shape[1]))
        self.shapes = tuple(shapes)

    def signature(self) -> dict:
        """Kind, patch size, level shapes and a hash of the fitted bases (two fits on other data differ)."""
        return {**super().signature(), 'patch': self.patch, 'basis': _basis_hash(self.bases)}

    def down1(self, x, k):
        """(B, h, w, C) -> (B, h/s, w/s, C')."""
        return _patchify(x, self.patch) @ self.bases[k - 1]

    def up1(self, y, k):
        """(B, h, w, C') -> (B, h s, w s, C)."""
        return _unpatchify(y @ self.bases[k - 1].T, self.patch)


class MatrixChain(Chain):
    """Chain from explicit relative bases U_{k|k-1} (n_{k-1} x n_k, orthonormal columns); levels >= 1 are vectors."""

    kind = 'matrix'

    def __init__(self, data_shape, rel_bases, kind='matrix'):
        self.kind = kind
        self.rel_bases = [jnp.asarray(u, jnp.float32) for u in rel_bases]
        if not rel_bases:
            raise ValueError('a chain needs at least one level (rel_bases is empty)')
        shapes = [tuple(data_shape)]
        for k, u in enumerate(rel_bases, start=1):
            n_prev = math.prod(shapes[-1])
            if u.ndim != 2 or u.shape[0] != n_prev or not 0 < u.shape[1] < n_prev:
                raise ValueError(f'U_{{{k}|{k - 1}}} must be ({n_prev}, n_{k}) with 0 < n_{k} < {n_prev}, '
                                 f'got {u.shape}')
            gram = np.asarray(u, np.float64).T @ np.asarray(u, np.float64)
            if not np.allclose(gram, np.eye(u.shape[1]), atol=1e-4):
                raise ValueError(f'U_{{{k}|{k - 1}}} does not have orthonormal columns '
                                 f'(max |U^T U - I| = {np.abs(gram - np.eye(u.shape[1])).max():.2e})')
            shapes.append((u.shape[1],))
        self.shapes = tuple(shapes)

    def signature(self) -> dict:
        """Kind, level shapes and a hash of the relative bases (two fits on other data differ)."""
        return {**super().signature(), 'basis': _basis_hash(self.rel_bases)}

    def down1(self, x, k):
        """(B, *shapes[k-1]) -> (B, n_k)."""
        return x.reshape(x.shape[0], -1) @ self.rel_bases[k - 1]

    def up1(self, y, k):
        """(B, n_k) -> (B, *shapes[k-1])."""
        return (y @ self.rel_bases[k - 1].T).reshape((y.shape[0],) + self.shapes[k - 1])


def _basis_hash(bases) -> str:
    """Short hash of a list of basis matrices, exact to their float32 bytes."""
    digest = hashlib.sha1()
    for b in bases:
        digest.update(np.ascontiguousarray(np.asarray(b, np.float32)).tobytes())
    return digest.hexdigest()[:12]


def _top_eigvecs(second_moment, n):
    """Top-n eigenvectors of a symmetric PSD matrix, signs fixed so the largest entry is positive."""
    w, v = np.linalg.eigh(second_moment)
    v = v[:, np.argsort(w)[::-1][:n]]
    signs = np.sign(v[np.abs(v).argmax(axis=0), np.arange(n)])
    return (v * signs).astype(np.float32)


def _check_fit(vectors: int, kept: int, what: str, unit: str):
    """A PCA that keeps more directions than it has vectors would pick the rest arbitrarily (zero eigenvalues)."""
    if vectors < kept:
        raise ValueError(f'{what} keeps {kept} directions but is fitted on {vectors} {unit}: beyond their span the '
                         f'basis would be arbitrary; fit it on at least {kept} (more images, or a larger '
                         f'subspace.fit_examples)')


def fit_pca_chain(data, dims) -> MatrixChain:
    """PCA chain from data (N, *shape): level k keeps the top dims[k-1] right singular vectors of level k-1 data."""
    data = np.asarray(data, np.float64)
    _check_fit(data.shape[0], max(dims), 'the PCA chain', 'example(s)')
    coords = data.reshape(data.shape[0], -1)
    rel = []
    for n in dims:
        u = _top_eigvecs(coords.T @ coords / coords.shape[0], n)
        rel.append(u)
        coords = coords @ u
    return MatrixChain(data.shape[1:], rel, kind='pca')


def fit_patch_pca_chain(data, levels: int, patch: int = 2) -> PatchChain:
    """Patch-PCA chain from images (N, H, W, C): per level one PCA over all s x s patches, top C components kept."""
    data = np.asarray(data, np.float64)
    image_shape = data.shape[1:]
    check_image_levels(image_shape, levels, patch, 'patch-PCA')
    c = data.shape[-1]
    bases = []
    for k in range(1, levels + 1):
        patches = np.asarray(_patchify(data, patch))
        vecs = patches.reshape(-1, patches.shape[-1])
        _check_fit(len(vecs), c, f'level {k} of the patch-PCA chain',
                   f'patch(es) ({len(vecs) // len(data)} per image)')
        b = _top_eigvecs(vecs.T @ vecs / vecs.shape[0], c)
        bases.append(b)
        data = patches @ b
    return PatchChain(image_shape, patch, bases)


def make_chain(kind: str, image_shape, levels: int, data=None, patch: int = 2) -> Chain:
    """Build a chain by kind: 'pooling' by `patch` (no data), 'pca' or 'patch_pca' (fitted from data (N, *shape))."""
    if kind == 'pooling':
        return PoolingChain(image_shape, levels, patch)
    if kind not in ('pca', 'patch_pca'):
        raise ValueError(f"subspace.kind must be 'pooling', 'pca' or 'patch_pca', got {kind!r}")
    if data is None:
        raise ValueError(f'subspace kind {kind!r} is fitted from data: pass training images')
    if kind == 'patch_pca':
        return fit_patch_pca_chain(data, levels, patch)
    # PCA levels get the same dimensions as pooling by 2 would, so the two are comparable.
    d = math.prod(image_shape)
    return fit_pca_chain(data, [d // 4 ** k for k in range(1, levels + 1)])


@dataclasses.dataclass
class PieceStats:
    """Data statistics per discarded piece W_j: mu[j-1] in level-(j-1) coordinates, sigma_perp[j-1] a scalar; and,
    measured with class labels (subspace.class_stats), the same per class c: class_mu[j-1][c], class_sigma_perp[c]."""

    mu: list
    sigma_perp: np.ndarray
    rms_distance: np.ndarray  # sqrt(E||x0 - P_k x0||^2 / (d - n_k)), k = 1..K (SPEC section 2 table)
    signature: dict
    class_mu: Optional[list] = None  # [(C, *shapes[j-1]) for j = 1..K]
    class_sigma_perp: Optional[np.ndarray] = None  # (C, K)

    @property
    def num_classes(self) -> int:
        """C of the per-class statistics (0 without them)."""
        return 0 if self.class_sigma_perp is None else len(self.class_sigma_perp)

    def dataset_wide(self) -> 'PieceStats':
        """These statistics without the per-class ones (every lift from the whole data set's)."""
        return dataclasses.replace(self, class_mu=None, class_sigma_perp=None)

    def check(self, chain: Chain):
        """Raise a clear error when these statistics were measured for another chain."""
        if self.signature != chain.signature():
            raise ValueError(f'subspace statistics are for chain {self.signature}, but the run uses '
                             f'{chain.signature()}: measure this chain\'s with `main.py --mode=subspace_stats` (kept '
                             f'beside the others, one file per chain), or point subspace.stats_path at them')


def compute_stats(chain: Chain, batches, num_classes: int = 0) -> PieceStats:
    """Streaming mu_j, sigma_perp_j and RMS distances from an iterable of (B, *shapes[0]) batches in model space;
    num_classes > 0: batches are (images, labels (B,) int in [0, num_classes)) and each class's are measured too."""
    K = chain.num_levels
    sums = [np.zeros(chain.shapes[j - 1]) for j in range(1, K + 1)]
    sq = np.zeros(K)
    count = 0
    sums_c = [np.zeros((num_classes,) + tuple(chain.shapes[j - 1])) for j in range(1, K + 1)]
    sq_c, counts = np.zeros((num_classes, K)), np.zeros(num_classes)
    for x in batches:
        x, labels = x if num_classes else (x, None)
        x = jnp.asarray(x, jnp.float32)
        chain.check_level(x, 0)
        onehot = None if labels is None else _one_hot(labels, num_classes, x.shape[0])
        level = x
        for j in range(1, K + 1):
            r = np.asarray(chain.new_dirs(level, j), np.float64)
            sums[j - 1] += r.sum(axis=0)
            sq[j - 1] += (r ** 2).sum()
            if onehot is not None:
                sums_c[j - 1] += np.tensordot(onehot, r, axes=1)
                sq_c[:, j - 1] += onehot @ (r ** 2).reshape(len(r), -1).sum(axis=1)
            level = chain.down1(level, j)
        count += x.shape[0]
        if onehot is not None:
            counts += onehot.sum(axis=1)
    if count == 0:
        raise ValueError('no data: the batch iterator for subspace statistics was empty')
    mu, sigma_perp, rms = _moments(chain, sums, sq, count)
    stats = PieceStats(mu=mu, sigma_perp=sigma_perp, rms_distance=rms, signature=chain.signature())
    if not num_classes:
        return stats
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(f'class {int(empty[0])} has no training image: per-class statistics need every class of '
                         f'0..{num_classes - 1} (config.model.num_classes) in the data')
    per_class = [_moments(chain, [s[c] for s in sums_c], sq_c[c], counts[c]) for c in range(num_classes)]
    return dataclasses.replace(stats, class_mu=[np.stack([m[0][j] for m in per_class]) for j in range(K)],
                               class_sigma_perp=np.stack([m[1] for m in per_class]))


def _one_hot(labels, num_classes: int, batch: int) -> np.ndarray:
    """(C, B) float64 indicator of labels (B,) in [0, num_classes); ValueError naming a label out of range."""
    labels = np.asarray(labels)
    if labels.shape != (batch,) or (labels.size and not 0 <= labels.min() <= labels.max() < num_classes):
        raise ValueError(f'class labels of the data must be {batch} integers in [0, {num_classes}) '
                         f'(config.model.num_classes={num_classes}), got {labels.min()}..{labels.max()}')
    return (np.arange(num_classes)[:, None] == labels[None]).astype(np.float64)


def _moments(chain: Chain, sums, sq, count):
    """(mu_j float32, sigma_perp_j, RMS distances) from the sums of the dropped components over `count` images."""
    mu = [s / count for s in sums]
    dims = np.array([chain.piece_dim(j) for j in range(1, chain.num_levels + 1)])
    second = sq / count
    var = (second - np.array([(m ** 2).sum() for m in mu])) / dims
    rms = np.sqrt(np.cumsum(second) / np.cumsum(dims))
    return [m.astype(np.float32) for m in mu], np.sqrt(np.maximum(var, 0)), rms


def check_cutoffs(cutoffs: Sequence[float], num_levels: int, T: float = 1.0) -> tuple:
    """Validated cutoff times t_1 < ... < t_K strictly inside (0, T), one per level."""
    cutoffs = tuple(float(c) for c in cutoffs)
    if len(cutoffs) != num_levels:
        raise ValueError(f'subspace.cutoffs has {len(cutoffs)} value(s) but the chain has {num_levels} level(s): '
                         f'give one cutoff time per level')
    if any(not 0 < c < T for c in cutoffs):
        raise ValueError(f'subspace.cutoffs {list(cutoffs)} must lie strictly inside (0, {T})')
    if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
        raise ValueError(f'subspace.cutoffs {list(cutoffs)} must be strictly increasing (t_1 < t_2 < ... < t_K)')
    return cutoffs


def signature_id(signature: dict) -> str:
    """Short stable name of a chain signature (for files kept per chain)."""
    return hashlib.sha1(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:10]


def describe_chain(chain: Chain, cutoffs=None) -> str:
    """'2-level pooling chain 16x16x1 -> 8x8x1 -> 4x4x1[, cutoffs [0.3, 0.6]]': how every mode names a chain."""
    shapes = ' -> '.join('x'.join(map(str, s)) for s in chain.shapes)
    return f'{chain.num_levels}-level {chain.kind} chain {shapes}' + (f', cutoffs {list(cutoffs)}' if cutoffs else '')


@dataclasses.dataclass(frozen=True, eq=False)
class Subspace:
    """Chain, piece statistics and cutoffs of subspace diffusion (SPEC sections 2 and 3), checked once; `labels`:
    the class labels (B,) of the samples drawn, whose lifts then use their class's statistics (`labelled`)."""

    chain: Chain
    stats: PieceStats
    cutoffs: tuple
    labels: Any = None

    def __post_init__(self):
        self.stats.check(self.chain)
        object.__setattr__(self, 'cutoffs', check_cutoffs(self.cutoffs, self.chain.num_levels))

    @property
    def num_levels(self) -> int:
        """K."""
        return self.chain.num_levels

    def describe(self) -> str:
        """The chain and its cutoffs in words, the same in every mode."""
        return describe_chain(self.chain, self.cutoffs)

    def level_of(self, t):
        """Active level k of time t: t in (t_k, t_{k+1}] (Python floats, or traced scalars -> int32)."""
        return sum((t > c) * 1 for c in self.cutoffs)

    @property
    def has_class_stats(self) -> bool:
        """Whether the statistics hold per-class ones (measured with labels, subspace.class_stats)."""
        return self.stats.class_mu is not None

    def labelled(self, labels) -> 'Subspace':
        """This subspace for samples of class labels (B,) int: piece c's statistics for a sample of class c, the
        whole data set's for label num_classes (no label), exact for per-class Gaussians (SPEC section 5); without
        per-class statistics, the data set's for every sample (this subspace)."""
        return dataclasses.replace(self, labels=labels) if self.has_class_stats else self

    def mu_full(self, j: int):
        """mu_j embedded in full space, shape shapes[0]."""
        return self.chain.up(jnp.asarray(self.stats.mu[j - 1])[None], j - 1)[0]

    def _piece_mean(self, j: int):
        """mu_j in level-(j-1) coordinates: (1, *shapes[j-1]), or each sample's class's (B, ...) when labelled."""
        if self.labels is None:
            return jnp.asarray(self.stats.mu[j - 1])[None]
        table = jnp.concatenate([jnp.asarray(self.stats.class_mu[j - 1], jnp.float32),
                                 jnp.asarray(self.stats.mu[j - 1], jnp.float32)[None]])
        return table[self.labels]

    def _piece_mean_full(self, j: int):
        """mu_j in full space: (1, *shapes[0]), or (B, ...) when labelled."""
        if self.labels is None:
            return self.mu_full(j)[None]
        return self.chain.up(self._piece_mean(j), j - 1)

    def _piece_sigma(self, j: int):
        """sigma_perp_j: a float, or each sample's class's (B,) when labelled."""
        if self.labels is None:
            return float(self.stats.sigma_perp[j - 1])
        table = np.append(np.asarray(self.stats.class_sigma_perp)[:, j - 1], self.stats.sigma_perp[j - 1])
        return jnp.asarray(table, jnp.float32)[self.labels]

    def lift_variance(self, sde, j: int, t):
        """v_j(t) = alpha(t)^2 sigma_perp_j^2 + sigma(t)^2 (SPEC section 3); per sample (B,) when labelled."""
        return sde.alpha(t) ** 2 * self._piece_sigma(j) ** 2 + sde.sigma(t) ** 2

    def implicit_score(self, sde, level_score: Callable, k: int) -> Callable:
        """Full-space score s(x, t) on (t_k, t_{k+1}] from the level-k score (SPEC section 3); x (B, *shapes[0])."""
        chain = self.chain

        def score(x, t):
            s = chain.up(level_score(chain.down(x, k), t), k)
            alpha = sde.alpha(t)
            for j in range(1, k + 1):
                resid = chain.piece(x, j) - bcast(alpha, x) * self._piece_mean_full(j)
                s = s - resid / bcast(self.lift_variance(sde, j, t), x)
            return s

        return score

    def lift(self, sde, x, k: int, t, noise):
        """Level-k state x at time t -> level k-1: U_{k|k-1} x + new directions of (alpha mu_k + sqrt(v_k) noise).

        noise (B, *shapes[k-1]) is standard normal; the result is exact for the SPEC section 5 case (per class, with
        per-class statistics, when labelled).
        """
        scale = jnp.sqrt(self.lift_variance(sde, k, t))
        if self.labels is not None:
            scale = bcast(scale, noise)
        inject = sde.alpha(t) * self._piece_mean(k) + scale * noise
        return self.chain.up1(x, k) + self.chain.new_dirs(inject, k)

    def lift_to_full(self, sde, x, k: int, t, noise):
        """Level-k state x -> full space (B, *shapes[0]) by the lifts k, ..., 1: every dropped piece drawn from its model.

        noise (B, *shapes[0]) is standard normal; lift j uses its level-(j-1) coordinates.
        """
        for j in range(k, 0, -1):
            x = self.lift(sde, x, j, t, self.chain.down(noise, j - 1))
        return x

    def complement(self, k: int):
        """(mu (shapes[0]), sigma_perp^2, dim Q) of the whole complement of V_k, from the per-piece statistics."""
        dims = np.array([self.chain.piece_dim(j) for j in range(1, k + 1)])
        mu = sum(self.mu_full(j) for j in range(1, k + 1))
        var = float(np.sum(dims * np.asarray(self.stats.sigma_perp[:k]) ** 2) / dims.sum())
        return mu, var, int(dims.sum())

