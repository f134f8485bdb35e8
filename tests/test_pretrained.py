"""The shipped model (pretrained/fashion_mnist, benchmarks/ship_model.py) loads without training or data and
samples garments: the README's third command, with a fast solver."""
import os
import sys

import numpy as np

import subspace_diffusion as sd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from noise_fraction import THRESHOLD, roughness  # noqa: E402

SHIPPED = os.path.join(ROOT, 'pretrained', 'fashion_mnist')


def test_shipped_model_samples_garments(tmp_path):
    model = sd.load(SHIPPED)
    assert model.describe().startswith('2-level pooling chain') and model.experiment.levels == (0, 1, 2)
    x = model.sample(8, method='dpm_solver++', nfe=20, seed=0)
    assert x.shape == (8, 32, 32, 1) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(model.sample(8, method='dpm_solver++', nfe=20, seed=0), x)  # deterministic
    assert not np.array_equal(model.sample(8, method='dpm_solver++', nfe=20, seed=1), x)
    # Garments, not noise: smooth images (benchmarks/noise_fraction.py's criterion), dark 2-pixel padding
    # around a bright object as in the data.
    rough = roughness((x * 255).round().astype(np.uint8))
    assert np.mean(rough > THRESHOLD) <= 0.25, rough
    assert x[:, 2:30, 2:30].mean() > 2 * x[:, :2].mean() + 0.05
    path = sd.save_grid(x, tmp_path / 'garments.png')
    assert os.path.getsize(path) > 0
