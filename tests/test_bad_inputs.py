"""Bad input, tried as a new user would: every case ends in one line naming the problem and the fix, a non-zero
exit, and nothing lost (the previous checkpoint, the record of what was trained)."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image
from tiny import ROOT, main_cmd, main_env, one_error_line, run_main, tiny_settings

from subspace_diffusion.evaluation import quality
from subspace_diffusion.jobs import conditional, train
from subspace_diffusion.run import loading, statistics
from subspace_diffusion.run.experiment import build_chain


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A workdir of the tiny config trained 2 steps (checkpoint at step 2)."""
    path = tmp_path_factory.mktemp('trained')
    train.train(tiny_settings(training__n_iters=2), path)
    return path


def _copy(trained, tmp_path):
    shutil.copytree(trained, tmp_path / 'run')
    return tmp_path / 'run'


def test_unknown_field_lists_close_names_and_a_missing_config_file(tmp_path):
    rc, err = run_main(f'--workdir={tmp_path}', '--mode=train', '--config.training.batchsize=4')
    last = one_error_line(rc, err, '--config.training.batchsize is not a field of configs/quick_digits.py')
    assert 'did you mean --config.training.batch_size' in last
    rc, err = run_main(f'--workdir={tmp_path}', '--mode=train', '--config=configs/nothere.py')
    one_error_line(rc, err, 'config file not found: --config=configs/nothere.py')
    assert not os.listdir(tmp_path)  # nothing was written


def test_a_bad_setting_is_one_line_before_anything_is_written(tmp_path):
    rc, err = run_main(f'--workdir={tmp_path / "w"}', '--mode=train', subspace__cutoffs=(0.3, 0.6))
    one_error_line(rc, err, 'subspace.cutoffs has 2 value(s) but the chain has 1 level')
    assert not (tmp_path / 'w').exists()  # validated before the workdir or its config record is written


@pytest.mark.parametrize('overrides,expected', [
    ({'training__batch_size': 0}, 'config.training.batch_size: must be >= 1'),
    ({'training__n_iters': 5}, 'config.training.n_iters: 5 is not a multiple of training.n_jitted_steps=2'),
    ({'data__dataset': 'imagenet'}, "config.data.dataset: unknown dataset 'imagenet'"),
    ({'eval__cond_mask': 'half'}, "config.eval.cond_mask: 'half' is neither a mask name"),
    ({'data__dataset': 'folder'}, "config.data.data_dir: dataset 'folder' needs the folder of images"),
])
def test_bad_settings_are_one_line(overrides, expected):
    # Raised by Settings.from_config, which main.py turns into its one line as above (in-process: no main.py each).
    with pytest.raises(ValueError) as e:
        tiny_settings(**overrides)
    assert expected in str(e.value) and '\n' not in str(e.value)


def test_workdir_that_is_a_file_or_under_a_file(tmp_path):
    (tmp_path / 'file').write_text('x')
    rc, err = run_main(f'--workdir={tmp_path / "file"}', '--mode=train')
    one_error_line(rc, err, 'is a file, not a directory: choose another --workdir')
    rc, err = run_main(f'--workdir={tmp_path / "file" / "run"}', '--mode=train')
    one_error_line(rc, err, 'cannot be written (a part of the path is a file): choose another --workdir')
    rc, err = run_main('--workdir=gs://bucket/run', '--mode=train')
    one_error_line(rc, err, 'is a URL: the workdir must be a file system path every process sees')
    assert not os.path.exists(os.path.join(ROOT, 'gs:'))  # main.py runs in ROOT


@contextlib.contextmanager
def _tmpfs(path, options):
    """A tmpfs mounted at `path` for the test (needs root and CAP_SYS_ADMIN; skips elsewhere)."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                                           capture_output=True).returncode:
        pytest.skip('mounting a tmpfs needs root with CAP_SYS_ADMIN')
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=False)


def test_read_only_workdir(tmp_path):
    if os.geteuid() != 0:  # an ordinary user: permissions make it read-only
        (tmp_path / 'ro').mkdir(mode=0o555)
        context = contextlib.nullcontext(tmp_path / 'ro')
    else:  # root ignores permissions: a read-only file system
        context = _tmpfs(tmp_path / 'ro', 'ro,size=1m')
    with context as workdir:
        rc, err = run_main(f'--workdir={workdir / "run"}', '--mode=train')
        one_error_line(rc, err, 'cannot be written (')


# main.py under a file-size limit (RLIMIT_FSIZE, lowered by the process itself: no privileges needed).
LIMITED = ('import resource, runpy, sys\nlimit = int(sys.argv.pop(1))\n'
           'resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n'
           'sys.argv.pop(0)\nrunpy.run_path(sys.argv[0], run_name="__main__")\n')


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(trained, tmp_path):
    # Every write past 16 kB fails (EFBIG; Python ignores SIGXFSZ) as on a full disk: the settings record and the
    # TensorBoard events fit, the checkpoint's arrays do not. The compilation cache, whose programs are larger
    # too, stays off.
    run = _copy(trained, tmp_path)
    cmd = main_cmd(f'--workdir={run}', '--mode=train', '--compile_cache=', training__n_iters=4)
    out = subprocess.run([cmd[0], '-c', LIMITED, '16000', *cmd[1:]], env=main_env(), capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    last = one_error_line(out.returncode, out.stderr, 'the last good checkpoint (step 2) is intact')
    assert 'saving the checkpoint of step 4 failed (File too large)' in last
    _, _, step = loading.load_parts(tiny_settings(), run)
    assert step == 2


def test_unreadable_image_in_the_folder_is_named(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f'{i}.png')
    (folder / 'broken.png').write_bytes(b'not a png')
    rc, err = run_main(f'--workdir={tmp_path / "w"}', '--mode=train', data__dataset='folder',
                       data__data_dir=str(folder))
    one_error_line(rc, err, f'cannot read image {folder / "broken.png"}')


def test_checkpoint_of_another_model_setting_names_the_fields(trained, tmp_path):
    run = _copy(trained, tmp_path)
    rc, err = run_main(f'--workdir={run}', '--mode=train', model__nf=16, model__dropout=0.1, training__n_iters=4)
    last = one_error_line(rc, err, 'was trained with other settings')
    assert 'model.nf: checkpoint 8, config 16' in last and 'model.dropout: checkpoint 0.0, config 0.1' in last


def test_statistics_are_kept_per_chain(tmp_path):
    one, two = tiny_settings(subspace__levels=1), tiny_settings(subspace__levels=2, subspace__cutoffs=(0.3, 0.6))
    for settings in (one, two):
        statistics.load(settings, build_chain(settings), tmp_path)
    files = sorted(f for f in os.listdir(tmp_path) if f.startswith('subspace_stats_') and f.endswith('.npz'))
    assert len(files) == 2  # two chains, two files: neither overwrote the other
    for settings in (one, two):
        chain = build_chain(settings)
        assert statistics.load(settings, chain, tmp_path).signature == chain.signature()
    # Pointing a 2-level run at the 1-level chain's file: an error that leaves that file alone.
    stats_of_one = statistics.stats_path(one, build_chain(one), tmp_path)
    wrong = tiny_settings(subspace__levels=2, subspace__cutoffs=(0.3, 0.6), subspace__stats_path=stats_of_one)
    with pytest.raises(ValueError, match='point config.subspace.stats_path at statistics of this chain') as e:
        statistics.load(wrong, build_chain(wrong), tmp_path)
    assert 'overwrite' not in str(e.value) and '--mode=subspace_stats' not in str(e.value)


def test_reference_statistics_follow_the_folder(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(folder / f'{i}.png')
    settings = tiny_settings(data__dataset='folder', data__data_dir=str(folder))
    path = lambda s: quality.Scorer(s, str(tmp_path)).ref_stats_path()  # noqa: E731
    before = path(settings)
    assert path(settings) == before  # the same folder: the same cache
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / '3.png')
    assert path(settings) != before  # another image: computed anew
    other = tmp_path / 'other'
    shutil.copytree(folder, other)
    assert path(tiny_settings(data__dataset='folder', data__data_dir=str(other))) != path(settings)


def test_mask_of_the_wrong_size_is_an_error(tmp_path):
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path / 'mask.png')
    settings = tiny_settings(eval__cond_mask=str(tmp_path / 'mask.png'))
    with pytest.raises(ValueError, match=r'mask image .* is 4x4, the images are 8x8 .*give a PNG mask'):
        conditional.inpaint_masks(settings, 2, (8, 8, 1))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / 'mask.png')
    assert conditional.inpaint_masks(settings, 2, (8, 8, 1)).shape == (2, 8, 8, 1)


def test_user_images_are_prepared_as_the_training_data(tmp_path):
    """A 28 px garment for a 32 px model with data.padding=2: padded by 2 px, not stretched; colour made grey; a
    mask drawn on the 28 px image is padded as known."""
    rng = np.random.default_rng(0)
    garment = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(garment).save(tmp_path / 'a.png')
    Image.fromarray(np.repeat(garment[..., None], 3, axis=-1)).save(tmp_path / 'b.png')  # the same, as RGB
    settings = tiny_settings(data__image_size=32, data__padding=2, eval__cond_mask=str(tmp_path / 'mask.png'))
    names, images, prepared = conditional.load_folder(settings, str(tmp_path))
    assert names == ['a.png', 'b.png'] and images.shape == (2, 32, 32, 1)
    np.testing.assert_allclose(images[:, 2:30, 2:30, 0], np.stack([garment, garment]) / 255., atol=1e-6)
    assert not images[:, :2].any() and not images[:, 30:].any() and not images[:, :, :2].any() \
        and not images[:, :, 30:].any()  # the zero border of every training image
    assert prepared == '2 of 28x28: made grey (the channel mean), padded by 2 px to 32x32 (data.padding) as the ' \
                       'training data'
    mask = np.full((28, 28), 255, np.uint8)
    mask[:, :10] = 0
    Image.fromarray(mask).save(tmp_path / 'mask.png')
    padded = conditional.inpaint_masks(settings, 2, images.shape[1:])
    assert padded.shape == (2, 32, 32, 1) and padded[0, :, :2].all() and not padded[0, 2:30, 2:12].any()
    assert padded[0, 2:30, 12:].all()


def test_non_finite_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(FloatingPointError, match=r'training stopped, no checkpoint yet;'):
        train.train(tiny_settings(optim__lr=3e38, optim__warmup=0), tmp_path)  # the first update overflows


def test_ctrl_c_saves_like_sigterm(tmp_path):
    log = tmp_path / 'log'
    with open(log, 'w') as f:
        run = subprocess.Popen(main_cmd('--mode=train', f'--workdir={tmp_path}', training__n_iters=100_000,
                                        training__snapshot_freq=100_000,
                                        training__snapshot_freq_for_preemption=100_000),
                               env=main_env(), stderr=f, cwd=ROOT)
        deadline = time.time() + 240
        while 'it/s' not in open(log).read() and run.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=120) == 130, open(log).read()[-3000:]
    text = open(log).read()
    assert 'SIGINT: saved step' in text and 'Traceback' not in text
    _, _, step = loading.load_parts(tiny_settings(), tmp_path)
    assert step > 0


def test_the_training_record_follows_the_checkpoints(trained, tmp_path):
    run = _copy(trained, tmp_path)  # its first checkpoint wrote the record
    first = (run / 'config_train.json').read_bytes()
    rc, _ = run_main(f'--workdir={run}', '--mode=train', training__n_iters=2)  # already done: nothing saved
    assert rc == 0 and (run / 'config_train.json').read_bytes() == first
    rc, err = run_main(f'--workdir={run}', '--mode=train', training__n_iters=4)
    assert rc == 0, err[-2000:]
    # The record describes the newest checkpoints; the one it replaced is kept for the checkpoints before step 4.
    assert json.load(open(run / 'config_train.json'))['training']['n_iters'] == 4
    assert (run / 'config_train_before_step_4.json').read_bytes() == first
    assert 'settings differ from those of the earlier checkpoints (training.n_iters)' in err
