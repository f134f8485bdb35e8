"""Tests for FID/IS/KID formulas and the FID Inception architecture + weight converter."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_diffusion.evaluation import quality
from subspace_diffusion.formats.files import FileProblem
from subspace_diffusion.formats.images import to_uint8
from subspace_diffusion.metrics import classifier, fid
from subspace_diffusion.metrics import inception as inc
from subspace_diffusion.run import data
from tiny import tiny_settings


def _psd_sqrt(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_matches_eigh_reference():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(200, 8)), 0.5 + 1.3 * rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) / 3
    mu1, s1 = fid.feature_stats(f1)
    mu2, s2 = fid.feature_stats(f2)
    np.testing.assert_allclose(s1, np.cov(f1.T))
    # tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), which the symmetric eigendecomposition computes exactly.
    r1 = _psd_sqrt(s1)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(_psd_sqrt(r1 @ s2 @ r1))
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), ref, rtol=1e-6)
    assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-6


def test_frechet_distance_singular_covariance():
    rng = np.random.default_rng(1)
    mu, s = fid.feature_stats(rng.normal(size=(5, 16)))  # rank 4 < 16
    _, s2 = fid.feature_stats(rng.normal(size=(6, 16)))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # handled by the definition, not by a warning
        assert abs(fid.frechet_distance(mu, s, mu, s)) < 1e-6
        assert fid.frechet_distance(mu, s, mu, s2) > 0


def test_inception_score():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(100, 10)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = []
    for part in np.split(p, 5):
        py = part.mean(0)
        ref.append(np.exp(np.mean(np.sum(part * np.log(part / py), 1))))
    mean, std = fid.inception_score(logits, splits=5, num_classes=None)
    np.testing.assert_allclose([mean, std], [np.mean(ref), np.std(ref)], rtol=1e-10)
    assert fid.inception_score(np.zeros((50, 1008)), splits=5)[0] == pytest.approx(1.0)
    confident = np.full((1000, 1008), -1e4)
    confident[np.arange(1000), np.arange(1000)] = 0.0  # each class exactly once; padding columns ignored
    assert fid.inception_score(confident, splits=1)[0] == pytest.approx(1000.0, rel=1e-6)


def test_kid():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.5
    k = lambda a, b: (a @ b.T / 6 + 1) ** 3
    ref = 0.0
    for i in range(40):
        for j in range(40):
            if i != j:
                ref += (k(x[i:i + 1], x[j:j + 1]) + k(y[i:i + 1], y[j:j + 1]))[0, 0] / (40 * 39)
            ref -= 2 * k(x[i:i + 1], y[j:j + 1])[0, 0] / 1600
    mean, std = fid.kernel_distance(x, y, subsets=3, subset_size=40)
    np.testing.assert_allclose(mean, ref, rtol=1e-10)
    assert std < 1e-12  # every subset is the full set
    same = [fid.kernel_distance(rng.normal(size=(100, 6)), rng.normal(size=(100, 6)), subsets=20, subset_size=50,
                                seed=s)[0] for s in range(5)]
    assert abs(np.mean(same)) < 0.05 * ref


def test_inception_shapes_and_param_count():
    v = inc._variable_shapes()
    out = jax.eval_shape(lambda v, x: inc.FIDInceptionV3().apply(v, x), v, jnp.zeros((2, 32, 32, 3)))
    assert out[0].shape == (2, 2048) and out[1].shape == (2, 1008)
    # torchvision inception_v3 (1000 classes, with aux) has 27,161,264 params; the aux head has
    # 3,326,696 (1x1 768->128 conv+bn, 5x5 128->768 conv+bn, 768->1000 fc); the 1008-way fc adds
    # 8*2048+8 = 16,392: 27,161,264 - 3,326,696 + 16,392 = 23,850,960 trainable params (BN buffers excluded).
    assert sum(int(np.prod(l.shape)) for l in jax.tree.leaves(v["params"])) == 23_850_960
    shapes = _torch_shapes()
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)


def _torch_shapes():
    return {key: shape for key, shape, _, _ in inc._torch_entries()}


def _fake_state_dict():
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in _torch_shapes().items()}


def test_converter(tmp_path):
    sd = _fake_state_dict()
    sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)  # harmless torch buffer, ignored
    np.savez(tmp_path / "w.npz", **sd)
    v = quality.read_inception(str(tmp_path / "w.npz"))
    shapes = jax.tree.map(lambda a: a.shape, inc._variable_shapes())
    assert jax.tree.map(lambda a: a.shape, v) == shapes
    p = v["params"]
    np.testing.assert_array_equal(p["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                                  sd["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(p["Mixed_5b"]["branch1x1"]["bn"]["scale"], sd["Mixed_5b.branch1x1.bn.weight"])
    np.testing.assert_array_equal(v["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                  sd["Mixed_7c.branch_pool.bn.running_var"])
    del sd["Conv2d_1a_3x3.bn.num_batches_tracked"]

    bad = dict(sd)
    del bad["Mixed_5b.branch1x1.conv.weight"]
    with pytest.raises(ValueError, match=r"1 key\(s\) missing .*Mixed_5b.branch1x1.conv.weight"):
        inc.params_from_state_dict(bad)
    with pytest.raises(ValueError, match="1 unexpected .*AuxLogits"):
        inc.params_from_state_dict(dict(sd, **{"AuxLogits.fc.weight": np.zeros((1, 1))}))
    with pytest.raises(ValueError, match="fc.weight has shape"):
        inc.params_from_state_dict(dict(sd, **{"fc.weight": np.zeros((2048, 1008), np.float32)}))


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileProblem) as e:
        quality.read_inception(str(tmp_path / "nope.pth"))
    msg = str(e.value)
    assert inc.FID_WEIGHTS_URL in msg and "does not exist" in msg and "inception_weights" in msg


def test_tf_style_pools():
    x = jnp.ones((1, 5, 5, 2))
    # Excluding padded zeros keeps a constant map constant at the borders (TF semantics).
    np.testing.assert_allclose(inc._avg_pool_same(x), x)
    assert inc._max_pool_valid(jnp.zeros((1, 7, 7, 1))).shape == (1, 3, 3, 1)


def test_inception_fn_forward(tmp_path):
    # Small random weights with positive variances keep activations finite; one real 299x299 forward (~3 s).
    sd = {k: 0.05 * v for k, v in _fake_state_dict().items()}
    sd.update({k: np.abs(v) + 1.0 for k, v in sd.items() if k.endswith("running_var")})
    fn = inc.inception_fn(inc.params_from_state_dict(sd))
    pool, logits = fn(np.full((1, 32, 32, 1), 128, np.uint8))
    assert pool.shape == (1, 2048) and logits.shape == (1, 1008)
    assert np.isfinite(np.asarray(logits)).all()
    gray = np.full((1, 32, 32, 3), 128 / 255.0, np.float32)
    np.testing.assert_allclose(fn(gray)[0], pool, rtol=1e-4, atol=1e-5)  # grayscale == repeated channels


def test_classifier_frechet_distance_is_zero_for_a_split_and_grows_with_noise():
    # Two classes of 16x16 images, bright on the left or on the right half, with pixel noise.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    images = rng.random((400, 16, 16, 1)).astype(np.float32) * 0.3
    images[labels == 0, :, :8] += 0.6
    images[labels == 1, :, 8:] += 0.6
    spec = classifier.ClassifierSpec('cnn', steps=60, learning_rate=3e-3, batch_size=64, num_classes=2)
    params = classifier.train(spec, images[:300], labels[:300], seed=0)
    assert classifier.accuracy(spec, params, images[300:], labels[300:]) > 0.95
    np.testing.assert_array_equal(classifier.train(spec, images[:300], labels[:300], seed=0)['w0'], params['w0'])
    feats = lambda x: np.asarray(classifier.features(spec, params, jnp.asarray(x)))  # noqa: E731
    ref = fid.feature_stats(feats(images))
    self_distance = fid.frechet_distance(*ref, *ref)  # ~0: the trace term's round-off on a near-singular covariance
    distances = []
    for noise in (0.05, 0.2, 0.6):
        noisy = np.clip(images + noise * rng.normal(size=images.shape), 0, 1).astype(np.float32)
        distances.append(fid.frechet_distance(*ref, *fid.feature_stats(feats(noisy))))
    assert abs(self_distance) < 1e-3 and distances[0] < distances[1] < distances[2], (self_distance, distances)
    assert distances[1] > 100 * abs(self_distance) and distances[2] > 1
    kid = fid.kernel_distance(feats(images), feats(np.clip(images + 0.6 * rng.normal(size=images.shape), 0, 1)))
    assert kid[0] > 10 * kid[1] > 0


def test_per_class_scores_of_the_reference_split(tmp_path):
    settings = tiny_settings(model__num_classes=10)  # the digits at 8 px: the MLP trains in seconds
    scorer = quality.Scorer(settings, str(tmp_path))
    images, labels = data.labelled_split(settings.data, settings.eval.ref_split)
    images = to_uint8(images)
    right = scorer.score(images, labels)
    wrong = scorer.score(images, (labels + 1) % 10)
    assert right['requested_class_accuracy'] > 0.9 and wrong['requested_class_accuracy'] < 0.1
    # On noisy images the classifier errs: the share is the one its logits give, image by image.
    noisy = to_uint8(np.clip(images / 255. + 0.3 * np.random.default_rng(0).normal(size=images.shape), 0, 1))
    share = scorer.score(noisy, labels)['requested_class_accuracy']
    x01 = classifier.pixel_features(noisy).reshape(noisy.shape)
    assert share == classifier.accuracy(scorer.classifier.spec, scorer.classifier.params, x01, labels)
    assert 0.2 < share < 0.9
    # Each class of the reference split is at distance ~0 from itself, and far from the next class.
    assert set(right['classifier_fd_per_class']) == {str(c) for c in range(10)}
    assert max(abs(v) for v in right['classifier_fd_per_class'].values()) < 1e-2
    assert min(wrong['classifier_fd_per_class'].values()) > 1
    assert wrong['classifier_fd_class_mean'] == np.mean(list(wrong['classifier_fd_per_class'].values()))
