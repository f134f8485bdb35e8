"""main.py --mode=cutoffs / inpaint / colorize end to end on a tiny model trained for a few steps on digits.

A 10-step model is not a good score model, so these tests check the plumbing (files, shapes, finite
values, known pixels kept), not the quality; the Gaussian tests check the mathematics.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tiny import tiny_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_flags()


def _main(*args):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *TINY, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A workdir with level-0 and level-1 EMA params (quick config, 1-level pooling chain) after 10 steps."""
    path = tmp_path_factory.mktemp('tiny')
    out = _main('--mode=train', f'--workdir={path}', '--config.training.n_iters=10', '--config.training.batch_size=16',
                '--config.training.snapshot_freq=10', '--config.training.snapshot_freq_for_preemption=10',
                '--config.training.log_freq=10', '--config.training.snapshot_sampling=False',
                '--config.subspace.train_level=-1')
    assert out.returncode == 0, out.stderr[-3000:]
    return path


def test_cutoffs_mode_writes_curves(workdir):
    out = _main('--mode=cutoffs', f'--workdir={workdir}', '--config.subspace.cutoff_times_num=5',
                '--config.subspace.cutoff_num_examples=20', '--config.subspace.cutoff_batch_size=16')
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.load(open(workdir / 'cutoffs.json'))
    assert len(result['ts']) == 5 and result['num_examples'] == 20 and result['threshold'] == 3e-3
    assert [row['level'] for row in result['levels']] == [1]
    curve = np.array(result['levels'][0]['divergence'])
    assert curve.shape == (5,) and np.all(np.isfinite(curve)) and np.all(curve >= 0)
    cutoff = result['levels'][0]['cutoff']
    assert cutoff is None or result['ts'][0] <= cutoff <= result['ts'][-1]
    with Image.open(workdir / 'cutoffs.png') as img:
        assert img.size[0] > 300 and img.size[1] > 200


def test_inpaint_mode_keeps_known_pixels(workdir, tmp_path):
    from sklearn.datasets import load_digits
    images = [np.asarray(Image.fromarray(np.uint8(d * 255 / 16)))
              for d in load_digits().images[:2]]
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f'digit{i}.png')
    out = _main('--mode=inpaint', f'--workdir={workdir}', f'--config.eval.cond_input_dir={tmp_path}',
                '--config.eval.cond_mask=left_half', '--config.eval.batch_size=2')
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'in the 1-level pooling chain 8x8x1 -> 4x4x1' in out.stderr  # every level trained: the subspace sampler
    for i, img in enumerate(images):
        result = np.asarray(Image.open(workdir / 'inpaint' / f'digit{i}.png'))
        assert result.shape == (8, 8)
        np.testing.assert_array_equal(result[:, 4:], img[:, 4:])
    assert os.path.exists(workdir / 'inpaint' / 'grid.png')


def test_colorize_needs_colour_data(workdir, tmp_path):
    out = _main('--mode=colorize', f'--workdir={workdir}', f'--config.eval.cond_input_dir={tmp_path}')
    assert out.returncode != 0
    assert 'colourisation needs colour data' in out.stderr
