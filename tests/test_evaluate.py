"""main.py --mode=eval end to end on the offline digits: samples, proxy metrics, bits/dim, resume after a kill."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from idx_files import idx_folder
from tiny import tiny_settings

from configs import quick_digits
from subspace_diffusion.evaluation import quality
from subspace_diffusion.formats.files import atomic_npz
from subspace_diffusion.jobs import evaluate
from subspace_diffusion.metrics import classifier, fid
from subspace_diffusion.run import data, loading
from subspace_diffusion.run.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The smallest NCSN++ that keeps every code path (one resolution, no attn_resolutions) on a 2-level chain.
TINY = ['--config=configs/quick_digits.py', '--config.subspace.levels=2', '--config.subspace.cutoffs=(0.3,0.6)',
        '--config.model.nf=8', '--config.model.num_res_blocks=1', '--config.model.ch_mult=(1,)',
        '--config.model.attn_resolutions=()']
EVAL = ['--mode=eval', '--config.sampling.num_steps=10', '--config.eval.batch_size=4',
        '--config.eval.num_samples=128', '--config.eval.enable_bpd=True', '--config.eval.bpd_num_examples=4',
        '--config.eval.bpd_num_repeats=1', '--config.eval.ode_rtol=1e-3', '--config.eval.ode_atol=1e-3']


@pytest.fixture(scope='module')
def env():
    return dict(os.environ, JAX_PLATFORMS='cpu')


def _cmd(*args):
    return [sys.executable, os.path.join(ROOT, 'main.py'), *args]


def _main(env, *args):
    return subprocess.run(_cmd(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def classifier_dir(tmp_path_factory):
    """A directory holding the cached digits classifier (trained once for the module)."""
    path = tmp_path_factory.mktemp('classifier')
    quality.ClassifierFeatures(_settings(), str(path))
    return path


def _copy_classifier(source, workdir):
    for f in source.glob('proxy_classifier_*.npz'):
        shutil.copy(f, workdir)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, env):
    """Workdir of a 1-step run of every level of the 2-level chain (train_level=-1)."""
    workdir = tmp_path_factory.mktemp('run')
    out = _main(env, '--mode=train', *TINY, f'--workdir={workdir}', '--config.subspace.train_level=-1',
                '--config.training.n_iters=1', '--config.training.n_jitted_steps=1',
                '--config.training.snapshot_freq=1', '--config.training.snapshot_freq_for_preemption=2',
                '--config.training.log_freq=1', '--config.training.snapshot_sampling=False',
                '--config.training.batch_size=8')
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def _settings(**fields):
    """The quick config's settings with eval fields replaced."""
    config = quick_digits.get_config()
    for name, value in fields.items():
        config.eval[name] = value
    return Settings.from_config(config)


def test_proxy_frechet_distances(classifier_dir):
    settings = _settings()
    features = quality.Scorer(settings, str(classifier_dir)).features
    assert set(features) == {'pixel', 'classifier'}
    assert features['classifier'].test_accuracy > 0.9
    train, _ = data.labelled_split(settings.data, 'train')
    test, _ = data.labelled_split(settings.data, 'test')
    noise = np.random.default_rng(0).random(test.shape, np.float32)
    for name, fn in features.items():
        ref = fid.feature_stats(fn(train))
        same = fid.frechet_distance(*ref, *ref)
        held_out = fid.frechet_distance(*ref, *fid.feature_stats(fn(test)))
        far = fid.frechet_distance(*ref, *fid.feature_stats(fn(noise)))
        # Itself: 0 (up to sqrtm error, the pixel covariance is singular); held-out digits: small; noise: far larger.
        assert abs(same) < 1e-4 and 0 < held_out < far / 20, (name, same, held_out, far)


def test_sample_metrics_with_and_without_inception(tmp_path, classifier_dir):
    settings = _settings()
    _copy_classifier(classifier_dir, tmp_path)
    test, _ = data.labelled_split(settings.data, 'test')
    images = np.round(test[:64] * 255).astype(np.uint8)
    scorer = quality.Scorer(settings, str(tmp_path))
    without = scorer.score(images)
    assert 'fid' not in without and 'skipped' in without['inception_metrics']
    assert 0 < without['classifier_fd'] < 10 and 0 < without['pixel_fd'] < 10  # held-out digits: close
    assert np.isfinite(without['classifier_kid'])

    # A stand-in for the FID Inception (the real weights are a download): fixed random features and logits.
    proj = np.random.default_rng(0).normal(size=(256, 24)).astype(np.float32)
    scorer.inception = lambda x: (x.reshape(len(x), -1) / 255. @ proj[:, :16], x.reshape(len(x), -1) / 255. @ proj[:, 16:])
    with_inception = scorer.score(images)  # the reference gains Inception statistics
    assert with_inception['fid'] > 0 and with_inception['inception_score'] >= 1 and np.isfinite(with_inception['kid'])
    assert with_inception['classifier_fd'] == pytest.approx(without['classifier_fd'])


def test_bad_workdirs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no checkpoints in .* train that level there first'):
        loading.level_workdirs(_settings(), str(tmp_path), (0, 1, 2))
    (tmp_path / 'checkpoints').mkdir()
    with pytest.raises(ValueError, match='give one workdir per level'):
        loading.level_workdirs(_settings(level_workdirs=(str(tmp_path),)), str(tmp_path), (0, 1, 2))


def test_eval_end_to_end_resumes_after_kill(tmp_path, trained, classifier_dir, env):
    # Evaluate into a fresh workdir with the trained run named per level (eval.level_workdirs).
    workdir = tmp_path / 'eval_run'
    workdir.mkdir()
    _copy_classifier(classifier_dir, workdir)
    args = [*TINY, *EVAL, f'--workdir={workdir}', f'--config.eval.level_workdirs=("{trained}","{trained}","{trained}")']
    folder = workdir / 'eval' / 'step_1'
    n_batches = 32

    proc = subprocess.Popen(_cmd(*args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 240
        while not (folder / 'samples_1.npz').exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = {p.name: np.load(p)['samples'] for p in folder.glob('samples_*.npz')}
    assert 2 <= len(kept) < n_batches, f'the kill did not land mid-sampling: {proc.stderr.read()[-2000:]}'
    assert not (folder / 'metrics.json').exists()
    # Shard 0 is removed so the rerun redoes it: batch i depends on fold_in(key, i) alone, not on the interruption.
    (folder / 'samples_0.npz').unlink()
    mtimes = {name: os.stat(folder / name).st_mtime_ns for name in kept if name != 'samples_0.npz'}

    out = _main(env, *args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'resuming: {len(kept) - 1} of {n_batches} sample batches already in' in out.stderr
    shards = [folder / f'samples_{i}.npz' for i in range(n_batches)]
    assert all(p.exists() for p in shards) and not list(folder.glob('*.tmp'))
    assert all(os.stat(folder / name).st_mtime_ns == t for name, t in mtimes.items())  # kept, not redone
    np.testing.assert_array_equal(np.load(shards[0])['samples'], kept['samples_0.npz'])
    samples = np.concatenate([np.load(p)['samples'] for p in shards])
    assert samples.shape == (128, 16, 16, 1) and samples.dtype == np.uint8
    assert (folder / 'samples_grid.png').exists()

    metrics = json.load(open(folder / 'metrics.json'))
    assert metrics['batches_sampled_this_run'] == n_batches - len(kept) + 1
    assert metrics['checkpoints']['2'] == {'workdir': str(trained), 'step': 1}
    for key in ('pixel_fd', 'classifier_fd', 'bpd', 'nfe_per_sample', 'samples_per_s'):
        assert np.isfinite(metrics[key]) and metrics[key] > 0, (key, metrics[key])
    assert 'skipped' in metrics['inception_metrics']  # no Inception weights offline: the rest still computed

    with pytest.raises(ValueError, match=r'archived steps in .*: \[1\]'):
        evaluate.eval_steps(_settings(begin_ckpt=5, end_ckpt=9), str(trained))


def _fashion(data_dir):
    """The tiny settings on Fashion-MNIST-style IDX files in data_dir (8 px: a cheap classifier)."""
    return tiny_settings(data__dataset='fashion_mnist', data__data_dir=str(data_dir))


def test_the_cached_classifier_serves_the_same_images_anywhere_and_says_why_not_others(tmp_path, monkeypatch,
                                                                                       caplog):
    idx_folder(tmp_path / 'a')
    shutil.copytree(tmp_path / 'a', tmp_path / 'moved')
    workdir = tmp_path / 'work'
    spec = quality.CLASSIFIERS['fashionmnist']
    params = classifier.init(spec, jax.random.PRNGKey(0), (8, 8, 1))
    settings = _fashion(tmp_path / 'a')
    cached = workdir / f'proxy_classifier_fashionmnist_8_{data.content_id(settings.data, "train")}.npz'
    atomic_npz(cached, test_accuracy=0.9, **params)  # as if trained on the images of a
    monkeypatch.setattr(classifier, 'train', lambda *a, **k: pytest.fail('trained a second classifier'))
    assert quality.ClassifierFeatures(_fashion(tmp_path / 'moved'), str(workdir)).test_accuracy == 0.9

    idx_folder(tmp_path / 'other', n=(24, 8))  # other images: the cached classifier cannot serve them
    trained = []
    monkeypatch.setattr(classifier, 'train', lambda *a, **k: trained.append(1) or params)
    monkeypatch.setattr(classifier, 'accuracy', lambda *a, **k: 0.9)
    with caplog.at_level(logging.INFO):
        quality.ClassifierFeatures(_fashion(tmp_path / 'other'), str(workdir))
    assert trained == [1]
    line, = [r.getMessage() for r in caplog.records if r.getMessage().startswith('no classifier of these')]
    assert f'in {workdir}: {cached.name} was trained on other images or at another size, padding or channel ' \
           f'count; training the cnn classifier of fashionmnist for the classifier Frechet distance, 3000 steps (the ' \
           f'ETA follows after 50) ...' in line


def test_without_the_data_evaluation_says_how_to_get_them_before_training_anything(tmp_path, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(FileNotFoundError) as e:
        quality.Scorer(_fashion(tmp_path / 'absent'), str(tmp_path))
    assert str(e.value).startswith(f"IDX folder not found: config.data.data_dir={str(tmp_path / 'absent')!r}: get the "
                                   f"canonical files with `apt-get download dataset-fashion-mnist")
    assert 'training' not in caplog.text and not os.listdir(tmp_path)
