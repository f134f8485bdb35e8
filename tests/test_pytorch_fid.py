"""FID and its features against pytorch-fid itself, and the Inception weights in both torch.save formats.

tests/data/torch/ holds what benchmarks/make_torch_fixtures.py wrote with torch and pytorch-fid: the layout of
pytorch-fid's FID Inception state_dict, its pool3 features and logits for fixed images under seeded weights
(tests/inception_recipe.py, regenerated here from numpy), its Frechet distance between two Gaussians, and a
part of that state_dict saved by torch in the zip and in the legacy format. No torch is needed here.
"""
import json
import os
import sys

import numpy as np
import pytest
import scipy.linalg

import inception_recipe
from subspace_diffusion.evaluation import quality
from subspace_diffusion.formats import pth
from subspace_diffusion.metrics import fid, inception

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'torch')


@pytest.fixture(scope='module')
def recipe_weights():
    """The seeded weights that pytorch-fid was run with, regenerated (checked against the manifest's digest)."""
    with open(os.path.join(DATA, 'fid_inception_manifest.json')) as f:
        manifest = json.load(f)
    weights = inception_recipe.weights(manifest['entries'])
    assert inception_recipe.digest(weights) == manifest['sha256'], (
        'numpy no longer draws the weights pytorch-fid was run with: rerun benchmarks/make_torch_fixtures.py')
    return weights


def _outputs():
    return np.load(os.path.join(DATA, 'fid_inception_outputs.npz'))


def _relative_error(ours, theirs):
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / np.abs(theirs).max())


def test_pool3_features_and_logits_equal_pytorch_fids(tmp_path, recipe_weights):
    expected = _outputs()
    # The weights reach the project as a user's file would, through its own reader: the .npz it accepts
    # (its legacy / zip readers are checked against torch's own files below and in test_reference_import).
    np.savez(tmp_path / 'weights.npz', **recipe_weights)
    features = inception.inception_fn(quality.read_inception(str(tmp_path / 'weights.npz')))
    for size in (32, 64):  # both resized to 299 x 299 first, as pytorch-fid does
        images = expected[f'images_{size}']
        pool3, logits = features(images)
        assert pool3.shape == (len(images), 2048) and logits.shape == (len(images), 1008)
        for name, ours in (('pool3', pool3), ('logits', logits)):
            theirs = expected[f'{name}_{size}']
            # float32 round-off through 94 conv layers in another order: 4e-7 to 6e-7 of the largest value here.
            assert _relative_error(ours, theirs) < 1e-5, (size, name, _relative_error(ours, theirs))
    # The features tell the images apart, so the agreement is not that of a constant output.
    assert _relative_error(expected['pool3_32'][0], expected['pool3_32'][1]) > 0.05
    assert 'torch' not in sys.modules


def test_frechet_distance_equals_pytorch_fids_matrix_square_root():
    expected = _outputs()
    mu1, sigma1, mu2, sigma2 = (expected[k] for k in ('mu1', 'sigma1', 'mu2', 'sigma2'))
    ours = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    # pytorch-fid's route: the general square root of S1 S2 (not symmetric), its real part.
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    theirs = (mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert ours == pytest.approx(float(expected['fid']), rel=1e-9)  # pytorch-fid's own function, run with torch
    assert fid.frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-9)


def test_inception_entries_saved_by_torch_read_the_same_from_both_formats(recipe_weights):
    from_zip = pth.load(os.path.join(DATA, 'inception_part.pth'))
    from_legacy = pth.load(os.path.join(DATA, 'inception_part_legacy.pth'))
    assert list(from_zip) == list(from_legacy) and len(from_zip) == 13
    for key, value in from_legacy.items():
        assert value.dtype == from_zip[key].dtype == recipe_weights[key].dtype, key
        assert value.tobytes() == from_zip[key].tobytes() == recipe_weights[key].tobytes(), key
    # Through the Inception reader: the file is read, and refused only as an incomplete state_dict.
    with pytest.raises(ValueError, match=r'are not the FID Inception weights: 461 key\(s\) missing'):
        quality.read_inception(os.path.join(DATA, 'inception_part_legacy.pth'))
