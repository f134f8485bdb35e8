"""The shipped model (pretrained/fashion_mnist, benchmarks/ship_model.py) loads without training or data and
samples garments: the README's third command, with a fast solver; main.py runs on it in a working copy, without
--config and without the dataset, and leaves the shipped folder as shipped."""
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tiny import main_env

import subspace_diffusion as sd
from subspace_diffusion.evaluation import quality
from subspace_diffusion.metrics import classifier
from subspace_diffusion.run import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from noise_fraction import THRESHOLD, roughness  # noqa: E402

SHIPPED = os.path.join(ROOT, 'pretrained', 'fashion_mnist')
FASHION = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist, where installed


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


# ---- main.py on the shipped model: a working copy, no --config, no dataset, its own classifier ----

def _all_files(folder) -> dict:
    """{relative path: sha1} of every file under `folder`, hidden ones (locks) included."""
    return {os.path.relpath(os.path.join(root, f), folder): hashlib.sha1(open(os.path.join(root, f), 'rb').read())
            .hexdigest() for root, _, files in os.walk(folder) for f in files}


def _main(cwd, *args):
    """main.py on the shipped model without --config (the record it carries), run from `cwd` -> (rc, stderr)."""
    cmd = [sys.executable, os.path.join(ROOT, 'main.py'), f'--workdir={SHIPPED}', *args]
    out = subprocess.run(cmd, cwd=cwd, env=main_env(), capture_output=True, text=True, timeout=600)
    return out.returncode, out.stderr


# The cheapest sampling that still runs the whole 2-level chain: DPM-Solver++ near its least budget.
FAST = ['--config.sampling.method=dpm_solver++', '--config.sampling.nfe_budget=4', '--config.eval.batch_size=2']


@pytest.fixture(scope='module')
def shipped_runs(tmp_path_factory):
    """A refused colorize (its working copy at the default place), an eval (no dataset) and an inpainting of two 28 px
    garments (both in --output_dir) on the shipped model, all without --config; the shipped folder's files before
    and after, with their outputs."""
    tmp = tmp_path_factory.mktemp('shipped')
    garments = tmp / 'garments'
    garments.mkdir()
    for i in range(2):  # a bright garment-like block on black, as Fashion-MNIST's 28 px images are
        img = np.zeros((28, 28), np.uint8)
        img[4 + i:24, 8:20 + i] = 200
        Image.fromarray(img).save(garments / f'{i}.png')
    work, absent = tmp / 'work', tmp / 'no_dataset_here'
    before = _all_files(SHIPPED)
    runs = {
        'colorize': _main(tmp, '--mode=colorize', f'--config.eval.cond_input_dir={garments}'),
        'eval': _main(tmp, '--mode=eval', f'--output_dir={work}', f'--config.data.data_dir={absent}',
                      '--config.eval.num_samples=2', *FAST),
        'inpaint': _main(tmp, '--mode=inpaint', f'--output_dir={work}', f'--config.eval.cond_input_dir={garments}',
                         *FAST),
    }
    return {'runs': runs, 'before': before, 'after': _all_files(SHIPPED), 'tmp': tmp, 'work': work}


def test_runs_on_the_shipped_model_leave_it_as_shipped(shipped_runs):
    runs, tmp, work = shipped_runs['runs'], shipped_runs['tmp'], shipped_runs['work']
    assert shipped_runs['after'] == shipped_runs['before']  # no lock, record, result, classifier or statistics
    rc, err = runs['colorize']
    assert rc != 0 and err.strip().splitlines()[-1].startswith('error: colourisation needs colour data'), err[-2000:]
    default = os.path.join('runs', 'fashion_mnist')  # the default working copy, relative to where main.py runs
    assert f'is a shipped model and stays as shipped: --mode=colorize works in {default}, a copy of it made now ' \
           f'(--output_dir=<dir> for another place)' in err
    assert (tmp / default / 'shipped.json').exists() and not list((tmp / default).glob('.lock_*'))
    for mode in ('eval', 'inpaint'):
        assert runs[mode][0] == 0, runs[mode][1][-3000:]
        assert not re.search(r'^W\d{4} |Warning:', runs[mode][1], re.M), runs[mode][1][-3000:]  # no warnings
        assert not list(work.glob('.lock_*'))  # locks removed at the end
    assert f'works in {work}, its copy' in runs['inpaint'][1]  # the second run reuses the copy


def test_a_shipped_model_is_refused_as_a_training_workdir(tmp_path):
    rc, err = _main(tmp_path, '--mode=train')
    assert rc != 0 and err.strip().splitlines()[-1] == (
        f'error: --workdir={SHIPPED} is a shipped model, kept as shipped: --mode=train writes checkpoints into its '
        f'workdir: copy it (cp -r {SHIPPED} runs/mine) and give --workdir=runs/mine'), err[-2000:]
    assert not os.listdir(tmp_path)


def test_eval_without_config_takes_the_record_the_model_carries(shipped_runs):
    err = shipped_runs['runs']['eval'][1]
    assert f'no --config: the settings recorded in {SHIPPED}/config_train.json, with the --config.<field> flags ' \
           f'on top' in err
    recorded = json.load(open(shipped_runs['work'] / 'config_eval.json'))
    assert recorded['eval']['num_samples'] == 2 and recorded['model'] == json.load(
        open(os.path.join(SHIPPED, 'config_train.json')))['model']  # the record, with the overrides on top


def test_eval_of_the_shipped_model_needs_no_dataset(shipped_runs):
    err, work = shipped_runs['runs']['eval'][1], shipped_runs['work']
    assert 'is not here: scoring with the classifier and the reference statistics this model carries' in err
    assert 'training the cnn classifier' not in err
    metrics = json.load(open(work / 'eval' / 'step_20000' / 'metrics.json'))
    assert metrics['num_samples'] == 2 and metrics['classifier_test_accuracy'] > 0.9  # the shipped classifier
    assert np.isfinite(metrics['classifier_fd']) and np.isfinite(metrics['pixel_fd'])
    assert '10000 images' in metrics['reference'] and metrics['classifier_kid'].startswith('skipped')
    assert sorted(p.name for p in work.glob('proxy_classifier_*.npz')) == \
        sorted(os.path.basename(p) for p in glob.glob(os.path.join(SHIPPED, 'proxy_classifier_*.npz')))


def test_28_px_garments_are_padded_as_the_training_data(shipped_runs):
    err, work = shipped_runs['runs']['inpaint'][1], shipped_runs['work']
    assert 'are 2 of 28x28: padded by 2 px to 32x32 (data.padding) as the training data' in err
    for i in range(2):
        result = np.asarray(Image.open(work / 'inpaint' / f'{i}.png'))
        given = np.asarray(Image.open(shipped_runs['tmp'] / 'garments' / f'{i}.png'))
        assert result.shape == (28, 28)  # written without the padding
        # The mask (left_half: the left half missing) split the padded image in the middle: the known right half is the
        # garment's as given, not stretched.
        np.testing.assert_array_equal(result[:, 14:], given[:, 14:])


def test_the_shipped_reference_statistics_and_manifest_are_small_and_whole():
    manifest = json.load(open(os.path.join(SHIPPED, 'shipped.json')))
    assert set(manifest['data']) == {'train', 'test'} and 'copy_of' not in manifest
    ref, = glob.glob(os.path.join(SHIPPED, 'ref_stats_*.npz'))
    assert os.path.getsize(ref) < 4e6
    with np.load(ref) as f:
        assert int(f['num_examples']) == 10000 and str(f['split']) == 'test'
        assert f['pixel_sigma'].shape == (1024, 1024) and f['classifier_sigma'].shape == (128, 128)
        assert all(np.isfinite(f[k]).all() for k in f.files if k.endswith(('_mu', '_sigma')))


@pytest.mark.skipif(not os.path.isdir(FASHION), reason='the canonical Fashion-MNIST files are not installed')
def test_the_shipped_classifier_serves_the_same_files_at_another_path(tmp_path, monkeypatch):
    copy = tmp_path / 'fmnist'
    shutil.copytree(FASHION, copy)  # other path, other times: the same images
    settings = sd.load(SHIPPED).settings
    settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, data_dir=str(copy)))
    monkeypatch.setattr(classifier, 'train', lambda *a, **k: pytest.fail('trained a second classifier'))
    features = quality.ClassifierFeatures(settings, SHIPPED)
    assert features.test_accuracy > 0.9
    assert data.source_digest(settings.data, 'train') == json.load(open(os.path.join(SHIPPED, 'shipped.json')))[
        'data']['train']
