"""main.py end to end on the offline dataset: subspace statistics, and a clear error for a bad chain."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_subspace_stats_mode_on_digits(tmp_path):
    out = _main('--mode=subspace_stats', '--config=configs/quick_digits.py', f'--workdir={tmp_path}',
                '--config.subspace.kind=pooling', '--config.subspace.levels=2', '--config.subspace.cutoffs=(0.3,0.6)')
    assert out.returncode == 0, out.stderr[-3000:]
    table = json.load(open(next(tmp_path.glob('subspace_stats_*.json'))))
    rms = [row['rms_distance_per_orthogonal_dim'] for row in table['levels']]
    sig = [row['piece_sigma_perp'] for row in table['levels']]
    # Real digit images have structure at every scale: positive spread, coarser levels lose more per dimension.
    assert 0 < rms[0] < rms[1] < 1 and all(0 < s < 1 for s in sig)
    with np.load(next(tmp_path.glob('subspace_stats_*.npz'))) as f:
        np.testing.assert_allclose(f['rms_distance'], rms, rtol=1e-6)
    assert os.path.exists(tmp_path / 'config_subspace_stats.json')


def test_bad_level_count_is_a_clear_error(tmp_path):
    out = _main('--mode=subspace_stats', '--config=configs/quick_digits.py', f'--workdir={tmp_path}',
                '--config.subspace.kind=pooling', '--config.subspace.levels=9',
                '--config.subspace.cutoffs=(0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9)')
    assert out.returncode != 0
    assert 'cannot support 9 pooling level(s)' in out.stderr
