"""What a new user's trial met on the command line and in every mode (issues 26 and 29), each answered in one line
naming the problem and the fix, with a non-zero exit, and the workdir's earlier files byte for byte as they were.

In-process where the function that refuses shows the same thing; main.py subprocesses where the command line
itself is what is tested (flags, --help, Ctrl-C, the multi-host start-up).
"""
import glob
import logging
import gzip
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from idx_files import idx_folder, write_idx
from ml_collections import config_flags
from PIL import Image
from tiny import ROOT, files_kept, main_cmd, main_env, one_error_line, run_main, tiny_settings, workdir_files

from subspace_diffusion import cli
from subspace_diffusion.core.sampling import below_minimum
from subspace_diffusion.core.subspaces import fit_patch_pca_chain
from subspace_diffusion.evaluation import quality
from subspace_diffusion.formats import idx
from subspace_diffusion.formats.files import FileProblem
from subspace_diffusion.formats.images import read_image
from subspace_diffusion.jobs import conditional, cutoffs, subspace_stats
from subspace_diffusion.metrics.classifier import ClassifierSpec
from subspace_diffusion.run import compilation, data, parallel, statistics
from subspace_diffusion.run.experiment import Experiment, build_chain

TRAINED = dict(subspace__train_level=-1)  # the settings trained_chain (conftest.py) was trained with


def _copy(trained_chain, tmp_path):
    return shutil.copytree(trained_chain, tmp_path / 'run')


def _one_line(error, *expected) -> str:
    """The text of a ValueError (what main.py prints as 'error: ...', exit 1): one line, with each of `expected`."""
    text = str(error.value if hasattr(error, 'value') else error)
    assert isinstance(error.value if hasattr(error, 'value') else error, ValueError), type(error)
    assert '\n' not in text and all(e in text for e in expected), text
    return text


def _images(folder, names, size=8):
    rng = np.random.default_rng(0)
    for name in names:
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(os.path.join(folder, name))
    return str(folder)


# ----------------------------------------------------------------------------- the listed failures


def test_a_compile_cache_that_cannot_serve_is_one_line(tmp_path, monkeypatch):
    (tmp_path / 'file').write_text('x')
    for path, expected in [(tmp_path / 'file', 'is a file, not a directory'),
                           (tmp_path / 'file' / 'cache', 'cannot be written (a part of the path is a file)'),
                           ('/proc/no/cache', 'cannot be written (')]:
        with pytest.raises(ValueError) as e:
            compilation.enable(str(path))
        _one_line(e, f'--compile_cache={path}', "--compile_cache= (empty) to run without the cache")
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'file'))  # the default under a file
    with pytest.raises(ValueError) as e:
        compilation.enable(compilation.default_dir())
    _one_line(e, 'a part of the path is a file', '$XDG_CACHE_HOME')
    assert workdir_files(tmp_path) == {'file': hashlib.sha1(b'x').hexdigest()}
    ro = tmp_path / 'ro'
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(ro)],
                                           capture_output=True).returncode:
        pytest.skip('an unwritable cache directory needs a read-only mount (root with CAP_SYS_ADMIN)')
    try:  # JAX would warn at every compilation and carry on uncached
        with pytest.raises(ValueError) as e:
            compilation.enable(str(ro))
        _one_line(e, 'cannot be written (read-only file system)')
    finally:
        subprocess.run(['umount', '-l', str(ro)], check=False)


def test_damaged_empty_or_foreign_idx_files_are_one_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='absl')
    rng = np.random.default_rng(0)
    cases = {
        'corrupt gzip': ('train-images-idx3-ubyte.gz', 'cannot be read (corrupt compressed data'),
        'no images': ('train-images-idx3-ubyte', 'holds no images'),
        'labels 0..255': ('train-labels-idx1-ubyte', 'label(s) outside the 10 classes 0..9'),
    }
    for case, (name, expected) in cases.items():
        folder = tmp_path / case.replace(' ', '_')
        idx_folder(folder, gz=False)
        if case == 'corrupt gzip':
            os.remove(folder / 'train-images-idx3-ubyte')
            raw = gzip.compress(bytes(4) + bytes(996))
            (folder / name).write_bytes(raw[:12] + bytes(b ^ 0x55 for b in raw[12:40]) + raw[40:])
        elif case == 'no images':
            write_idx(folder / name, np.zeros((0, 28, 28), np.uint8))
            write_idx(folder / 'train-labels-idx1-ubyte', np.zeros(0, np.uint8))
        else:
            write_idx(folder / name, rng.integers(10, 256, 20).astype(np.uint8))
        before = workdir_files(folder)
        with pytest.raises(FileProblem) as e:
            idx.read_split(str(folder), 'train')
        _one_line(e, str(folder / name), expected, 'replace it with the canonical file')
        assert files_kept(before, folder)
    # Images of another size than MNIST's are centre-cropped and resized, and the log says so.
    folder = tmp_path / 'odd'
    idx_folder(folder, gz=False)
    write_idx(folder / 'train-images-idx3-ubyte', rng.integers(0, 256, (20, 5, 7)).astype(np.uint8))
    settings = tiny_settings(data__dataset='mnist', data__data_dir=str(folder))
    assert next(data.get_dataset(settings.data, 'train', 4))['image'].shape == (4, 8, 8, 1)
    assert f'the train IDX images of {folder} are 5x7: centre-cropped and resized to 8x8' in caplog.text


def test_import_flags_missing_or_given_to_another_mode(trained_chain, tmp_path):
    run = _copy(trained_chain, tmp_path)
    before = workdir_files(run)
    rc, err = run_main(f'--workdir={run}', '--mode=import', '--import_level=0')
    one_error_line(rc, err, '--mode=import needs --import_from')
    rc, err = run_main(f'--workdir={run}', '--mode=train', f'--import_from={tmp_path / "x.pth"}', **TRAINED)
    one_error_line(rc, err, '--import_from is for --mode=import only, not --mode=train')
    assert files_kept(before, run) and set(workdir_files(run)) == set(before)


def test_tuple_settings_given_as_text_name_the_field():
    for overrides, expected in [
        ({'model__ch_mult': ('(1,)',)}, "config.model.ch_mult: must be a tuple of numbers, got ('(1,)',): the tuple "
                                        "arrived as the text '(1,)' (quoted twice?): write \"--config.model.ch_mult=(1,)\" (one pair "
                                        "of quotes, for the shell)"),
        ({'subspace__cutoffs': ('(abc,)',)}, "config.subspace.cutoffs: must be a tuple of numbers, got ('(abc,)',): "
                                             "'(abc,)' is not a number"),
        ({'model__ch_mult': (1, 'a')}, "config.model.ch_mult: must be a tuple of numbers, got (1, 'a')"),
    ]:
        with pytest.raises(ValueError) as e:
            tiny_settings(**overrides)
        _one_line(e, expected)


# ----------------------------------------------------------------------------- issue 29: 1, 3, 5


@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')  # how ml_collections loads a config file
def test_a_repeated_flag_takes_its_last_value_for_tuples_too(monkeypatch):
    argv = ['main.py', '--config=configs/quick_digits.py', '--config.model.ch_mult=(1,)', '--config.model.ch_mult=1,2',
            '--config.subspace.cutoffs=(0.3,)', '--config.subspace.cutoffs', '(0.6,)', '--config.training.batch_size=4',
            '--config.training.batch_size=8', '--config=configs/quick_digits.py']
    kept, repeated = cli._last_wins(argv)
    assert repeated == ['--config', '--config.model.ch_mult', '--config.subspace.cutoffs', '--config.training.batch_size']
    values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, 'argv', kept)  # ml_collections finds the overrides in sys.argv
    values(kept)
    config = values.config
    assert (config.model.ch_mult, config.subspace.cutoffs, config.training.batch_size) == ((1, 2), (0.6,), 8)


def test_a_classifier_below_the_accuracy_floor_gives_no_distances(tmp_path, monkeypatch):
    idx_folder(tmp_path / 'idx', n=(64, 32))  # random labels: nothing to learn
    monkeypatch.setitem(quality.CLASSIFIERS, 'mnist', ClassifierSpec('cnn', steps=3, learning_rate=1e-3,
                                                                    batch_size=16))
    settings = tiny_settings(data__dataset='mnist', data__data_dir=str(tmp_path / 'idx'))
    workdir = tmp_path / 'w'
    workdir.mkdir()
    with pytest.raises(ValueError) as e:
        quality.ClassifierFeatures(settings, str(workdir))
    _one_line(e, 'the cnn classifier of mnist classifies only', 'the floor for its Frechet distance and KID is 50%',
              'use the canonical label files')
    assert not os.listdir(workdir)  # not cached: a fixed data set trains it anew


def test_one_image_makes_no_statistics_and_no_pca(tmp_path):
    folder = _images(tmp_path / 'one', ['a.png'])
    settings = tiny_settings(data__dataset='folder', data__data_dir=folder)
    workdir = tmp_path / 'w'
    workdir.mkdir()
    with pytest.raises(ValueError) as e:
        quality.Scorer(settings, str(workdir)).write_reference()
    _one_line(e, 'holds 1 image(s): reference statistics (a mean and a covariance) need at least 2')
    nan = tmp_path / 'nan_stats.npz'  # what fid_stats wrote from one image before: NaN, then "did not converge"
    np.savez(nan, split=np.array('train'), num_examples=np.array(1), pixel_mu=np.zeros(64),
             pixel_sigma=np.full((64, 64), np.nan))
    with pytest.raises(FileProblem) as e:
        quality.Scorer(tiny_settings(data__dataset='folder', data__data_dir=folder, eval__ref_stats_path=str(nan)),
                       str(workdir)).reference()
    _one_line(e, f'reference statistics {nan} hold values that are not finite')
    with pytest.raises(ValueError) as e:
        build_chain(tiny_settings(data__dataset='folder', data__data_dir=folder, subspace__kind='pca'))
    _one_line(e, 'the PCA chain keeps 16 directions but is fitted on 1 example(s)', 'fit it on at least 16')
    assert not os.listdir(workdir)
    # Patch-PCA needs as many patches as it keeps components (C per level): one colour patch is too few.
    with pytest.raises(ValueError) as e:
        fit_patch_pca_chain(np.ones((1, 2, 2, 3)), 1)
    _one_line(e, 'level 1 of the patch-PCA chain keeps 3 directions but is fitted on 1 patch(es) (1 per image)')


def test_inpainting_keeps_earlier_results_and_names_apart(trained_chain, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='absl')
    run = _copy(trained_chain, tmp_path)
    inputs = _images(tmp_path / 'in', ['a/x.png', 'b/x.png', 'y.png'])
    settings = tiny_settings(**TRAINED, eval__cond_input_dir=inputs, sampling__method='ode_heun',
                             sampling__nfe_budget=2, eval__batch_size=4)
    conditional.inpaint(settings, str(run))
    written = sorted(os.path.relpath(p, run / 'inpaint') for p in glob.glob(str(run / 'inpaint' / '**' / '*.png'),
                                                                             recursive=True))
    assert written == ['a/x.png', 'b/x.png', 'grid.png', 'y.png']  # one stem in two folders: two results
    assert 'wrote 3 result(s) and grid.png' in caplog.text
    assert 'sampling.nfe_budget=2 is below the least ode_heun spends on this 2-stage solve' in caplog.text
    before = workdir_files(run)
    with pytest.raises(ValueError) as e:  # another mask into the same folder: refused before anything runs
        conditional.inpaint(tiny_settings(**TRAINED, eval__cond_input_dir=inputs, eval__cond_mask='right_half'),
                            str(run))
    _one_line(e, f'{run / "inpaint"} holds the results of an earlier run', '--config.eval.cond_folder')
    clash = _images(tmp_path / 'clash', ['x.png', 'x.jpg', 'grid.png'])
    with pytest.raises(ValueError) as e:
        conditional.inpaint(tiny_settings(**TRAINED, eval__cond_input_dir=clash, eval__cond_folder='other'), str(run))
    _one_line(e, 'grid.png and the overview grid would both be written as grid.png', 'rename one of them')
    assert files_kept(before, run) and not (run / 'other').exists()


def test_cutoffs_count_true_and_never_replace_other_results(trained_chain, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='absl')
    run = _copy(trained_chain, tmp_path)
    few = _images(tmp_path / 'few', ['a.png', 'b.png', 'c.png'])  # fewer than cutoff_num_examples
    overrides = dict(**TRAINED, data__dataset='folder', data__data_dir=few, subspace__cutoff_times_num=2,
                     subspace__cutoff_num_examples=16, subspace__cutoff_batch_size=16)
    result = cutoffs.cutoffs(tiny_settings(**overrides), str(run))
    assert result['num_examples'] == 3 and 'the training set holds 3 examples, fewer than' in caplog.text
    before = workdir_files(run)
    cutoffs.cutoffs(tiny_settings(**overrides), str(run))  # the same inputs: the same numbers, rewritten
    assert workdir_files(run) == before
    with pytest.raises(ValueError) as e:
        cutoffs.cutoffs(tiny_settings(**{**overrides, 'subspace__cutoff_threshold': 1e-2}), str(run))
    _one_line(e, 'cutoffs.json holds cutoffs computed from other inputs (subspace.cutoff_threshold)',
              'move cutoffs.json and cutoffs.png away')
    assert workdir_files(run) == before


# ----------------------------------------------------------------------------- issue 29: 6


def test_help_lists_the_modes_and_the_main_flags():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--help'], env=main_env(),
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert set(cli.MODE_HELP) == set(cli.MODES)
    for word in [*cli.MODES, *[f'--{name}' for name in cli.MAIN_FLAGS], '--config.<section>.<field>=<value>']:
        assert word in out.stdout, word


def test_config_file_problems_name_the_file(tmp_path):
    sources = {
        'raises.py': ('from configs import quick_digits\n\n\ndef get_config():\n    config = quick_digits.get_config()\n'
                      '    return config.nope\n', 'raises.py, line 6: get_config() failed with AttributeError'),
        'syntax.py': ('def get_config(:\n    pass\n', 'syntax.py, line 1: invalid syntax'),
        'imports.py': ('import no_such_module_here\n', 'imports.py, line 1: loading it failed with ModuleNotFoundError'),
        'none.py': ('X = 1\n', 'none.py defines no get_config()'),
        'argument.py': ('def get_config(size):\n    return None\n', 'argument.py: get_config(size) needs an argument'),
        'empty.py': ('def get_config():\n    return None\n', 'empty.py: get_config() returned None'),
    }
    for name, (source, expected) in sources.items():
        (tmp_path / name).write_text(source)
        try:  # what config_flags meets while it parses --config
            spec = importlib.util.spec_from_file_location(name[:-3], tmp_path / name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            problem = ValueError('flag --config=None: Flag --config must have a value other than None.') \
                if module.get_config() is None else None
        except Exception as e:  # noqa: BLE001
            problem = e
        assert problem is not None and expected in cli._config_problem(str(tmp_path / name), problem), name
    assert 'takes no argument, but --config=' in cli._config_problem(
        'configs/quick_digits.py:5', TypeError('get_config() takes 0 positional arguments but 1 was given'))
    # The whole command line: the file and the line, nothing written.
    rc, err = run_main(f'--workdir={tmp_path / "w"}', '--mode=train', f'--config={tmp_path / "raises.py"}')
    one_error_line(rc, err, f'{tmp_path / "raises.py"}, line 6: get_config() failed with AttributeError')
    assert not (tmp_path / 'w').exists()


def test_multi_host_flags_misused_are_one_line():
    for args, expected in [
        ((False, None, 2, None), '--num_processes without --coordinator_address and --process_id'),
        ((False, 'localhost:1234', None, None), '--coordinator_address without --num_processes and --process_id'),
        ((False, 'localhost', 2, 0), '--coordinator_address=localhost is not host:port'),
        ((False, 'localhost:1234', 2, 2), '--process_id=2 is not one of the 2 processes'),
        ((True, None, 0, None), '--num_processes=0: a run has at least 1 process'),
    ]:
        with pytest.raises(ValueError) as e:
            parallel.check_processes(*args)
        _one_line(e, expected)
    parallel.check_processes(True)  # --distributed alone: JAX detects the rest


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def test_a_process_that_never_comes_ends_the_start_up_in_one_line(tmp_path):
    port = _free_port()
    start = time.perf_counter()
    rc, err = run_main(f'--workdir={tmp_path / "w"}', '--mode=train', f'--coordinator_address=localhost:{port}',
                       '--num_processes=2', '--process_id=0', '--distributed_timeout=2')
    one_error_line(rc, err, f'process 0 waited 2 s at localhost:{port} for process 1, which never connected')
    assert time.perf_counter() - start < 60 and not (tmp_path / 'w').exists()
    rc, err = run_main(f'--workdir={tmp_path / "w"}', '--mode=train', '--distributed')
    one_error_line(rc, err, '--distributed found no multi-host environment to join')


def test_exif_rotation_rgba_masks_and_a_missing_mask(tmp_path):
    sideways = np.zeros((4, 8), np.uint8)
    sideways[:, :4] = 255  # left half white, stored sideways with EXIF orientation 6 (rotate 90 clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(sideways).save(tmp_path / 'photo.jpg', exif=exif, quality=100)
    upright = read_image(tmp_path / 'photo.jpg')[..., 0] > 0.5
    assert upright.shape == (8, 4) and upright[:4].all() and not upright[4:].any()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255  # all white, the right half transparent: only the left half is known
    rgba[:, :4, 3] = 255
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'mask.png')
    masks = conditional.inpaint_masks(tiny_settings(eval__cond_mask=str(tmp_path / 'mask.png')), 2, (8, 8, 1))
    assert masks[..., :4, 0].all() and not masks[..., 4:, 0].any()
    with pytest.raises(FileProblem) as e:
        conditional.inpaint_masks(tiny_settings(eval__cond_mask=str(tmp_path / 'none.png')), 2, (8, 8, 1))
    _one_line(e, f'mask image {tmp_path / "none.png"} does not exist: set config.eval.cond_mask to a mask PNG')
    assert 'remove or replace' not in str(e.value)


def test_the_budget_note_only_where_the_budget_cannot_be_kept(trained_chain):
    settings = tiny_settings(**TRAINED)
    exp = Experiment.build(settings, (0, 1))
    diffusion = exp.diffusion(statistics.load(settings, exp.chain, str(trained_chain)))
    sampling = tiny_settings(sampling__method='dpm_solver++', sampling__nfe_budget=2).sampling
    assert below_minimum(diffusion, sampling).startswith('sampling.nfe_budget=2 is below the least dpm_solver++ '
                                                         'spends on this 2-stage solve (one step per stage: 2.25')
    assert below_minimum(diffusion, tiny_settings(sampling__method='dpm_solver++', sampling__nfe_budget=20).sampling) \
        is None
    assert below_minimum(diffusion, settings.sampling) is None  # PC has no budget


def test_folder_counts_and_a_data_set_too_large_for_memory(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger='absl')
    folder = _images(tmp_path / 'f', ['a.png', 'b.png', 'c.png'])
    settings = tiny_settings(data__dataset='folder', data__data_dir=folder)
    next(data.get_dataset(settings.data, 'train', 2))
    assert f'dataset folder {folder}: 3 image(s)' in caplog.text
    monkeypatch.setattr(data, 'available_memory', lambda: 100)
    with pytest.raises(ValueError) as e:
        next(data.get_dataset(settings.data, 'train', 2))
    _one_line(e, f'the folder {folder} would take 0.0 GiB in memory (3 images of 8x8x1 float32), more than the 0.0 '
                 f'GiB available: use a smaller data.image_size or fewer images')
    with pytest.raises(ValueError) as e:  # the digits, before they are upsampled
        next(data.get_dataset(tiny_settings(data__image_size=4096).data, 'train', 2))
    _one_line(e, 'the digits would take 112.3 GiB in memory (1,797 images of 4096x4096x1 float32)')


# ----------------------------------------------------------------------------- what the trial found besides


def test_a_stray_argument_and_an_empty_workdir(trained_chain, tmp_path):
    run = _copy(trained_chain, tmp_path)
    before = workdir_files(run)
    out = subprocess.run(main_cmd('train', f'--workdir={run}', '--mode=train', **TRAINED), env=main_env(),
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    one_error_line(out.returncode, out.stderr, 'unexpected argument(s) train: every input is a flag, e.g. --mode=train')
    assert workdir_files(run) == before
    with pytest.raises(ValueError) as e:
        cli.check_workdir('')
    _one_line(e, '--workdir is empty')


def test_ctrl_c_outside_training_is_one_line(trained_chain, tmp_path):
    run = _copy(trained_chain, tmp_path)
    before = workdir_files(run)
    log = tmp_path / 'log'
    with open(log, 'w') as f:  # the divergence over 1,498 batches of one: interrupted once it has begun
        proc = subprocess.Popen(main_cmd('--mode=cutoffs', f'--workdir={run}', **TRAINED, subspace__cutoff_batch_size=1,
                                         subspace__cutoff_num_examples=2000), env=main_env(), stderr=f, cwd=ROOT)
        deadline = time.time() + 240
        while 'cutoffs of the' not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    one_error_line(rc, log.read_text(), 'interrupted (Ctrl-C): --mode=cutoffs stopped; every file it wrote is whole, '
                                        'rerun the same command to carry on')
    assert rc == 130 and workdir_files(run) == before  # nothing half-written: cutoffs.json comes whole at the end


def test_settings_the_trial_found_unchecked(trained_chain, tmp_path):
    for overrides, expected in [
        ({'eval__num_samples': 1}, 'config.eval.num_samples: must be >= 2, got 1'),  # no covariance of one sample
        ({'eval__folder': 'checkpoints'}, "config.eval.folder: 'checkpoints' is a folder training writes"),
        ({'eval__cond_folder': 'a/b'}, 'config.eval.cond_folder: must be one folder name inside the workdir'),
        ({'eval__cond_folder': 'tensorboard'}, "config.eval.cond_folder: 'tensorboard' is a folder training writes"),
    ]:
        with pytest.raises(ValueError) as e:
            tiny_settings(**overrides)
        _one_line(e, expected)
    run = _copy(trained_chain, tmp_path)
    before = workdir_files(run)
    mine = tmp_path / 'mine.npz'
    with pytest.raises(ValueError) as e:  # the user's file is read, never written
        subspace_stats.subspace_stats(tiny_settings(**TRAINED, subspace__stats_path=str(mine)), str(run))
    _one_line(e, f'config.subspace.stats_path={mine} is only ever read')
    assert not mine.exists() and workdir_files(run) == before
