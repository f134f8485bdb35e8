"""Hardening, by class of bad input: every numeric setting range-checked, every file read through one guard,
outputs inside the workdir, limits before allocation, one writer per workdir, the Inception weights read safely.
After every bad input the workdir's earlier checkpoints, statistics and metrics are unchanged."""
import glob
import importlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import zlib

import ml_collections
import numpy as np
import pytest
import torch_format
from PIL import Image
from tiny import (
    ROOT,
    files_kept,
    main_env,
    one_error_line,
    run_main,
    tiny_config,
    tiny_settings,
    workdir_files,
)

from subspace_diffusion import api
from subspace_diffusion.evaluation import quality, shards
from subspace_diffusion.formats import idx, pth
from subspace_diffusion.formats.files import FileProblem, read_npz
from subspace_diffusion.formats.images import MAX_PIXELS, read_image
from subspace_diffusion.jobs import conditional, train
from subspace_diffusion.metrics import inception
from subspace_diffusion.run import statistics
from subspace_diffusion.run.experiment import build_chain
from subspace_diffusion.run.lock import WorkdirLock, WorkdirLocked
from subspace_diffusion.run.settings import RULES, Settings, field_paths

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))
# Values a field's rule accepts among the probes (NaN, inf, -1, just outside the range), each with its meaning.
ACCEPTED = {
    ('eval.begin_ckpt', -1): 'the latest archived step', ('eval.end_ckpt', -1): 'the latest archived step',
    ('subspace.train_level', -1): 'every level in one run',
}


# What a run keeps (checkpoints, statistics, metrics, samples) is every file but the settings records (rewritten
# by each run) and the locks (hidden files, which workdir_files never lists).
RECORDS = ('config_',)


def _contents(workdir) -> dict:
    """{relative path: sha1} of what a run keeps."""
    return workdir_files(workdir, RECORDS)


# ----------------------------------------------------------------------------- 1. every setting range-checked


def _numeric_fields(config):
    for path in field_paths(config):
        section, _, name = path.rpartition('.')
        value = config[section][name] if section else config[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, tuple, list)):
            continue
        if isinstance(value, (tuple, list)) and not (value and all(isinstance(v, (int, float)) for v in value)):
            continue
        yield path, value


def _with(config, path, value):
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked, untyped copy: a config file can hold anything
    section, _, name = path.rpartition('.')
    (config[section] if section else config)[name] = value
    return config


@pytest.mark.parametrize('name', CONFIGS)
def test_every_numeric_field_of_every_config_is_range_checked(name):
    base = importlib.import_module(f'configs.{name}').get_config()
    checked = 0
    for path, value in _numeric_fields(base):
        assert path in RULES, f'{path} has no declared rule'
        rule = RULES[path]
        for probe in [math.nan, math.inf, -1, *rule.outside()]:
            if isinstance(value, int) and not isinstance(probe, int):
                continue  # an int field cannot hold NaN or inf: ml_collections refuses it (see the test below)
            bad = (probe,) + tuple(value[1:]) if isinstance(value, (tuple, list)) else probe
            if rule.problem(probe) is None:
                assert (path, probe) in ACCEPTED, f'{path}={probe!r} is accepted: document why in ACCEPTED'
                continue
            with pytest.raises(ValueError) as e:
                Settings.from_config(_with(base, path, bad))
            message = str(e.value)
            assert message.startswith(f'config.{path}: ') and '\n' not in message, (path, probe, message)
            checked += 1
    assert checked > 150


def test_nan_in_an_int_field_and_a_seed_are_one_line(tmp_path):
    # NaN for an int is refused by the flag parser (main.py); the rest by Settings.from_config (in-process).
    rc, err = run_main(f'--workdir={tmp_path / "w"}', '--mode=train', '--config.training.batch_size=nan')
    one_error_line(rc, err, 'batch_size')
    assert not (tmp_path / "w").exists()  # nothing written before the settings pass
    seed = tiny_config()
    seed.seed = -1
    with pytest.raises(ValueError, match=re.escape('config.seed: must lie in [0, 2147483647], got -1')):
        Settings.from_config(seed)
    with pytest.raises(ValueError, match='config.sampling.nfe_budget: must be a finite number, got nan'):
        tiny_settings(sampling__nfe_budget=math.nan)


def test_smaller_settings_problems():
    for overrides, expected in [({'model__dropout': 1.5}, 'config.model.dropout: must lie in [0, 1)'),
                                ({'model__ch_mult': (1, 0)}, 'config.model.ch_mult: must be >= 1, got 0'),
                                ({'model__ch_mult': (1, 2.5)}, 'config.model.ch_mult: must be an integer, got 2.5'),
                                ({'eval__folder': '..'}, 'config.eval.folder: must be one folder name'),
                                ({'eval__folder': 'a/b'}, 'config.eval.folder: must be one folder name'),
                                ({'data__padding': 4}, 'config.data.padding: 4 pixels on each side leave nothing')]:
        with pytest.raises(ValueError, match=re.escape(expected)):
            tiny_settings(**overrides)


def test_a_config_whose_get_config_raises_is_one_line(tmp_path):
    bad = tmp_path / 'broken.py'
    bad.write_text('from configs import quick_digits\n\n\ndef get_config():\n    return quick_digits.get_config()["nope"]\n')
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), f'--config={bad}', '--mode=train',
                          f'--workdir={tmp_path / "w"}'], env=main_env(), capture_output=True, text=True, cwd=ROOT)
    last = one_error_line(out.returncode, out.stderr, 'get_config() failed with KeyError')
    assert str(bad) in last and 'nope' in last


# ----------------------------------------------------------------------------- 2. every file through one guard


def _corrupt(kind: str, path, valid: bytes):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    if kind == 'directory':
        os.makedirs(path)
    else:
        with open(path, 'wb') as f:
            f.write({'truncated': valid[:max(1, len(valid) // 2)], 'empty': b'',
                     'wrong format': b'\x89PNG\r\n\x1a\n' + b'\x07' * 64 if not valid.startswith(b'\x89PNG')
                     else b'PK\x03\x04 not an image'}[kind])


def _readers(tmp_path, trained_chain):
    """{name: (valid file bytes, read(path))} for every kind of file the project reads."""
    settings = tiny_settings(subspace__train_level=-1)
    stats_file = statistics.stats_path(settings, build_chain(settings), str(trained_chain))
    npz = lambda p: read_npz(p, 'test file', 'fix it')  # noqa: E731
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / 'mask.png')
    idx_bytes = bytes([0, 0, 8, 3]) + (2).to_bytes(4, 'big') + (4).to_bytes(4, 'big') * 2 + bytes(32)
    torch_format.save_state_dict(tmp_path / 'w.pth', {'a': np.ones(4, np.float32)})
    json_bytes = json.dumps(tiny_config().to_dict()).encode()
    return {
        'statistics': (open(stats_file, 'rb').read(), lambda p: statistics.read(p, 'fix it')),
        'reference statistics / caches (.npz)': (open(stats_file, 'rb').read(), npz),
        'mask or folder image': ((tmp_path / 'mask.png').read_bytes(), read_image),
        'IDX file': (idx_bytes, lambda p: idx.read_idx(p, 3)),
        'torch checkpoint / Inception weights (.pth)': ((tmp_path / 'w.pth').read_bytes(), pth.load),
        'settings record (.json)': (json_bytes, lambda p: api._config_of(os.path.dirname(p), None, None, {})),
    }


@pytest.mark.parametrize('kind', ['truncated', 'empty', 'directory', 'wrong format'])
def test_every_reader_answers_a_damaged_file_in_one_line(tmp_path, trained_chain, kind):
    for name, (valid, read) in _readers(tmp_path, trained_chain).items():
        path = str(tmp_path / ('config_train.json' if 'json' in name else f'file_{len(name)}'))
        with open(path, 'wb') as f:
            f.write(valid)
        read(path)  # the valid file reads
        _corrupt(kind, path, valid)
        with pytest.raises(ValueError) as e:  # FileProblem and PthError are ValueErrors: main.py prints one line
            read(path)
        message = str(e.value)
        assert path in message and '\n' not in message and len(message) < 400, (name, kind, message)


def test_damaged_caches_are_recomputed_and_said(trained_chain, tmp_path, caplog):
    run = shutil.copytree(trained_chain, tmp_path / 'run')
    settings = tiny_settings(subspace__train_level=-1)
    chain = build_chain(settings)
    path = statistics.stats_path(settings, chain, str(run))
    good = statistics.read(path, 'fix')
    open(path, 'wb').write(open(path, 'rb').read()[:100])
    again = statistics.load(settings, chain, str(run))
    np.testing.assert_allclose(again.sigma_perp, good.sigma_perp)
    assert 'measuring them again' in caplog.text and statistics.read(path, 'fix').signature == good.signature
    with pytest.raises(FileProblem, match='point config.subspace.stats_path'):  # the user's own file: an error
        open(tmp_path / 'mine.npz', 'wb').write(b'PK')
        statistics.load(tiny_settings(subspace__stats_path=str(tmp_path / 'mine.npz')), chain, str(run))
    assert not shards._usable(_damaged(tmp_path / 'samples_0.npz'))  # a damaged shard is sampled again


def _damaged(path):
    np.savez(path, samples=np.zeros((2, 8, 8, 1), np.uint8), nfe=np.ones(()))
    open(path, 'wb').write(open(path, 'rb').read()[:40])
    return path


def test_pickled_npz_is_refused_without_loading(tmp_path):
    np.savez(tmp_path / 'w.npz', a=np.array([object()], dtype=object))
    with pytest.raises(FileProblem, match='pickled Python objects, which are never loaded'):
        read_npz(tmp_path / 'w.npz', 'FID Inception weights', 'fix')


def test_a_damaged_checkpoint_is_one_line_and_kept(trained_chain, tmp_path):
    run = shutil.copytree(trained_chain, tmp_path / 'run')
    for root, _, files in os.walk(run / 'checkpoints' / 'archive' / '2' / 'state'):
        for f in files:
            open(os.path.join(root, f), 'r+b').truncate(3)
    before = _contents(run)
    rc, err = run_main(f'--workdir={run}', '--mode=eval', subspace__train_level=-1, eval__num_samples=4)
    last = one_error_line(rc, err, 'cannot be read')
    assert 'move it out of the way' in last and len(err.strip().splitlines()) < 15  # the log, then one line
    assert files_kept(before, run, RECORDS)
    rc, err = run_main('--mode=import', f'--workdir={tmp_path / "w"}', f'--import_from={tmp_path}', '--import_level=0')
    one_error_line(rc, err, 'is a directory, not a file')


# ----------------------------------------------------------------------------- 3.-4. paths, limits before allocation


def _png_header(path, width, height, bit_depth):
    """A small PNG file whose header claims width x height pixels (its one data chunk holds a single row)."""
    def chunk(kind, body):
        return len(body).to_bytes(4, 'big') + kind + body + zlib.crc32(kind + body).to_bytes(4, 'big')
    ihdr = width.to_bytes(4, 'big') + height.to_bytes(4, 'big') + bytes([bit_depth, 0, 0, 0, 0])
    row = zlib.compress(b'\x00' * (1 + width * bit_depth // 8))
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', row) + chunk(b'IEND', b''))
    return path


def test_oversized_images_are_refused_from_their_header(tmp_path):
    for depth in (8, 16):  # Pillow's decoder and TensorFlow's 16-bit one alike
        path = _png_header(tmp_path / f'bomb{depth}.png', 20000, 20000, depth)
        with pytest.raises(FileProblem, match=r'20000x20000 pixels, over the limit of .*checked before decoding'):
            read_image(path)
    assert MAX_PIXELS >= 4096 * 4096


def test_torch_files_are_checked_before_allocating(tmp_path):
    torch_format.save(tmp_path / 'expanded.pth', {'w': torch_format.tensor_view(
        np.zeros(1, np.float32), '0', (10 ** 6, 10 ** 6), (0, 0))})
    with pytest.raises(pth.PthError, match='stride-0 .* refused before allocating'):
        pth.load(tmp_path / 'expanded.pth')
    torch_format.save(tmp_path / 'short.pth', {'w': torch_format.tensor(np.zeros(4, np.float32), '0')},
                      storage_bytes={'0': b'\0' * 8})
    with pytest.raises(pth.PthError, match='has 8 bytes, expected 16: the file is truncated'):
        pth.load(tmp_path / 'short.pth')


def _refused_in_one_line(path, pattern):
    """pth.load(path) raises PthError matching `pattern`, in one line, having allocated under 1 MiB on the way."""
    tracemalloc.start()
    try:
        with pytest.raises(pth.PthError, match=pattern) as e:
            pth.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(e.value)
    assert message.startswith(str(path)) and '\n' not in message and peak < 1 << 20, (message, peak)


def test_hostile_legacy_torch_files_are_refused_before_allocating_or_running_anything(tmp_path):
    w = np.arange(4, dtype=np.float32)
    torch_format.save_state_dict(tmp_path / 'valid.pth', {'w': w}, legacy=True)
    np.testing.assert_array_equal(pth.load(tmp_path / 'valid.pth')['w'], w)
    valid = (tmp_path / 'valid.pth').read_bytes()  # ends with storage 0's count and 16 bytes
    torch_made = open(os.path.join(ROOT, 'tests', 'data', 'torch', 'inception_part_legacy.pth'), 'rb').read()
    header = b''.join(pickle.dumps(v, protocol=2) for v in (pth.LEGACY_MAGIC, pth.LEGACY_PROTOCOL))
    system = pickle.dumps({'protocol_version': 1001, 'little_endian': True,
                           'type_sizes': {'short': 2, 'int': 4, 'long': 4}}, protocol=2)
    assert valid.startswith(header + system) and torch_made.startswith(header + system)  # torch's header, bytewise
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    tensor = torch_format.tensor(w, '0')
    cases = {  # name: (write it, what the one line says)
        'GLOBAL os.system in the object': (lambda p: torch_format.save_legacy(p, {'w': tensor, 'x': Evil()}),
                                           r'refused to load (os|posix)\.system'),
        'GLOBAL os.system in the header': (lambda p: p.write_bytes(header + pickle.dumps(Evil(), protocol=2)),
                                           r'refused to load (os|posix)\.system'),
        'count larger than the file': (lambda p: torch_format.save_legacy(p, {'w': tensor}, counts={'0': 10 ** 9}),
                                       'storage 0 has 16 bytes, expected 4,000,000,000: the file is truncated'),
        'negative count': (lambda p: torch_format.save_legacy(p, {'w': tensor}, counts={'0': -1}),
                           r'storage 0 has a negative size \(-4 bytes\)'),
        'overflowing count': (lambda p: torch_format.save_legacy(p, {'w': tensor}, counts={'0': 2 ** 62}),
                              'storage 0 claims 18,446,744,073,709,551,616 bytes, over the limit'),
        'count not that of its tensors': (
            lambda p: p.write_bytes(valid[:-24] + (3).to_bytes(8, 'little') + valid[-16:]),
            'storage 0 holds 3 elements, but its tensors were saved over 4'),
        # A pickle length field of 1 TiB (BINBYTES8): the unpickler alone would allocate it before reading.
        'pickle length past the file': (lambda p: p.write_bytes(header + system + b'\x80\x04\x8e' + (1 << 40).to_bytes(
            8, 'little') + b'x.'), f'pickle at byte {len(header + system)} .* bytes8, but only 2 remain'),
        'not a torch file': (lambda p: p.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(64)),
                             'neither a torch.save zip archive .* nor a legacy torch.save file'),
    }
    for name, (write, pattern) in cases.items():
        path = tmp_path / f'{name}.pth'
        write(path)
        _refused_in_one_line(path, pattern)
    assert not marker.exists()
    # Cut anywhere: the writer's file at every byte, torch's own at points in each part of the stream.
    n = len(torch_made)
    for data, cuts in ((valid, range(1, len(valid))), (torch_made, (5, 20, 300, n // 4, n // 2, n - 9))):
        for cut in cuts:
            (tmp_path / 'cut.pth').write_bytes(data[:cut])
            _refused_in_one_line(tmp_path / 'cut.pth', 'truncated|cannot read its pickle|neither')


# ----------------------------------------------------------------------------- 5. one writer per workdir


HOLD = r'''
import sys, time
from subspace_diffusion.run.lock import WorkdirLock
with WorkdirLock(sys.argv[1], 'train'):
    print('held', flush=True)
    time.sleep(300)
'''


def test_a_second_writer_is_refused_and_a_killed_holders_lock_taken_over(trained_chain, tmp_path):
    run = shutil.copytree(trained_chain, tmp_path / 'run')
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(run)], env=main_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        before = _contents(run)
        rc, err = run_main(f'--workdir={run}', '--mode=train', training__n_iters=4, subspace__train_level=-1)
        last = one_error_line(rc, err, 'is in use by another run (--mode=train on host')
        assert f'process {holder.pid}, since ' in last and 'wait for it to finish or stop it' in last
        assert files_kept(before, run, RECORDS)
        with WorkdirLock(str(run), 'eval'):  # an evaluation beside a training: another kind of writer
            with pytest.raises(WorkdirLocked):
                WorkdirLock(str(run), 'import').__enter__()  # import writes checkpoints, as training does
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    rc, err = run_main(f'--workdir={run}', '--mode=train', training__n_iters=4, subspace__train_level=-1)
    assert rc == 0, err[-2000:]
    assert 'taking over the workdir lock left by --mode=train on host' in err and f'process {holder.pid}' in err


# ----------------------------------------------------------------------------- 6. the Inception weights


def _fake_inception():
    rng = np.random.default_rng(0)
    return {key: 0.05 * rng.normal(size=shape).astype(np.float32) + (1.0 if key.endswith('running_var') else 0.0)
            for key, shape, _, _ in inception._torch_entries()}


def test_inception_weights_read_as_pth_without_torch_and_as_npz(tmp_path):
    sd = _fake_inception()
    torch_format.save_state_dict(tmp_path / 'pt_inception.pth', sd)
    torch_format.save_state_dict(tmp_path / 'pt_inception_legacy.pth', sd, legacy=True)  # pytorch-fid's own format
    np.savez(tmp_path / 'pt_inception.npz', **sd)
    assert 'torch' not in sys.modules
    from_npz = quality.read_inception(str(tmp_path / 'pt_inception.npz'))
    leaves = lambda v: [np.asarray(x) for x in __import__('jax').tree.leaves(v)]  # noqa: E731
    for name in ('pt_inception.pth', 'pt_inception_legacy.pth'):
        for a, b in zip(leaves(quality.read_inception(str(tmp_path / name))), leaves(from_npz), strict=True):
            np.testing.assert_array_equal(a, b)
    assert 'torch' not in sys.modules  # nothing imported torch, nothing was unpickled beyond tensors


def test_missing_inception_weights_stop_eval_before_sampling(trained_chain, tmp_path):
    run = shutil.copytree(trained_chain, tmp_path / 'run')
    rc, err = run_main(f'--workdir={run}', '--mode=eval', subspace__train_level=-1, eval__num_samples=4,
                    eval__inception_weights=str(tmp_path / 'missing.pth'))
    one_error_line(rc, err, 'FID Inception weights')
    assert not list(run.glob('eval/**/samples_*.npz'))  # checked before anything was sampled


# ----------------------------------------------------------------------------- 7. smaller items


def test_grey_digits_train_as_colour_and_a_grey_mask_is_refused(tmp_path):
    state = train.train(tiny_settings(data__num_channels=3, training__n_iters=2), tmp_path / 'rgb')
    assert state.params['level_0']['all_modules_3']['kernel'].shape[-2] == 3  # no Flax shape traceback
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / 'grey.png')
    with pytest.raises(FileProblem, match='grey levels other than black and white'):
        conditional.inpaint_masks(tiny_settings(eval__cond_mask=str(tmp_path / 'grey.png')), 1, (8, 8, 1))


def test_non_finite_samples_are_never_scored(tmp_path):
    plan = shards.ShardPlan(str(tmp_path), 4, 4, __import__('jax').random.PRNGKey(0), {'space': 'test'})
    with pytest.raises(FloatingPointError, match='sample batch 0 is not finite'):
        shards.draw(lambda p, k, n: (np.full((n, 8, 8, 1), np.nan, np.float32), 1.0), None, lambda x: x, plan)
    assert not list(tmp_path.glob('samples_*.npz'))


def test_lock_waits_for_nobody_after_a_clean_exit(tmp_path):
    with WorkdirLock(str(tmp_path), 'train'):
        pass
    t0 = time.time()
    with WorkdirLock(str(tmp_path), 'train'):
        assert time.time() - t0 < 1
    assert not os.listdir(tmp_path)  # released and removed: the workdir keeps no trace of the lock


def test_nothing_is_lost_after_any_bad_input(trained_chain, tmp_path):
    run = shutil.copytree(trained_chain, tmp_path / 'run')
    os.makedirs(run / 'eval' / 'step_2')
    (run / 'eval' / 'step_2' / 'metrics.json').write_text('{"classifier_fd": 1.0}')  # an earlier result
    before = _contents(run)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / 'grey.png')
    torch_format.save(tmp_path / 'bomb.pth', {'model': {'w': torch_format.tensor_view(
        np.zeros(1, np.float32), '0', (10 ** 5, 10 ** 5), (0, 0))}})
    # Settings problems stop before anything is read or written (test_bad_inputs.py); these come later, from files.
    cases = [
        ({'eval__cond_input_dir': str(tmp_path), 'eval__cond_mask': str(tmp_path / 'grey.png')}, ['--mode=inpaint'],
         'grey levels'),
        ({'eval__inception_weights': str(tmp_path / 'grey.png')}, ['--mode=eval'], 'FID Inception weights'),
        ({}, ['--mode=import', f'--import_from={tmp_path / "bomb.pth"}', '--import_level=0'], 'refused before'),
        ({'subspace__stats_path': str(tmp_path)}, ['--mode=eval'], 'is a directory, not a file'),
    ]
    for overrides, args, expected in cases:
        rc, err = run_main(f'--workdir={run}', *args, subspace__train_level=-1, eval__num_samples=4, **overrides)
        one_error_line(rc, err, expected)
        assert files_kept(before, run, RECORDS), (args, overrides)
