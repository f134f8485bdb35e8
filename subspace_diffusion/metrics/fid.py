"""FID, Inception Score and KID formulas on precomputed features / logits (numpy, scipy): Inception's or any other."""
import numpy as np
import scipy.special


def feature_stats(features):
    """(N, D) features -> (mu (D,), sigma (D, D)) with the unbiased (N-1) covariance, as in TF/pytorch-fid."""
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(a):
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); mu (D,), sigma (D, D) -> float.

    ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}), with tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}
    computed by symmetric eigendecompositions: exact for PSD covariances, singular ones (fewer samples
    than dimensions) included, where a general matrix square root is ill-conditioned.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"stat shapes differ: {mu1.shape}/{mu2.shape}, {sigma1.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    root = _psd_sqrt(sigma1)
    middle = root @ sigma2 @ root
    trace_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def inception_score(logits, splits=10, num_classes=1000):
    """(N, C) logits -> (mean, std) over splits of exp(E_x KL(p(y|x) || p(y))).

    The FID Inception has 1008 outputs; only the first 1000 are ImageNet classes (the last 8 are unused),
    so by default the softmax is over logits[:, :1000]. The original OpenAI IS code softmaxes over all
    1008 (the unused classes get ~0 mass, so the scores differ only slightly); num_classes=None does that.
    """
    logits = np.asarray(logits, np.float64)
    if num_classes is not None:
        logits = logits[:, :num_classes]
    log_p = scipy.special.log_softmax(logits, axis=1)
    scores = []
    for part in np.array_split(log_p, splits):
        log_py = np.log(np.exp(part).mean(0))
        kl = (np.exp(part) * (part - log_py)).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _mmd2_unbiased_poly(x, y):
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                    - 2.0 * kxy.mean())


def kernel_distance(f1, f2, subsets=100, subset_size=1000, seed=0):
    """KID in any features: (N1, D), (N2, D) -> (mean, std) over random subsets of the unbiased MMD^2, k=(x.y/D+1)^3."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    vals = [_mmd2_unbiased_poly(f1[rng.choice(len(f1), m, replace=False)],
                                                            f2[rng.choice(len(f2), m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))
