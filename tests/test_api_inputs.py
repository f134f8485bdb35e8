"""The Python API on empty, half-written and foreign workdirs and with bad arguments: one ValueError naming the
argument, what it got and what it takes; and the settings record it reads, which describes the checkpoints (a
failed first run, a refused run and a resume with other cutoffs included)."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import subspace_diffusion as sd
from subspace_diffusion.jobs import import_checkpoint, train
from subspace_diffusion.run.settings import Settings
from tiny import ROOT, TESTS, main_env, tiny_config, tiny_settings, workdir_files

RUN = dict(subspace__train_level=-1, training__n_iters=2, training__snapshot_freq=2, eval__num_samples=4,
           eval__batch_size=4, sampling__nfe_budget=8.0, eval__ode_rtol=1e-3, eval__ode_atol=1e-3)
REF = os.path.join(TESTS, 'data', 'reference')


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """Both levels of the tiny 1-level chain trained 2 steps, after a first run that failed on a mistyped folder."""
    path = tmp_path_factory.mktemp('api_inputs')
    with pytest.raises(FileNotFoundError, match='dataset folder not found'):
        train.train(tiny_settings(**RUN, data__dataset='folder', data__data_dir=str(path / 'imgs_typo')), path)
    assert not [f for f in os.listdir(path) if f.startswith('config')]  # the failed run recorded nothing
    train.train(tiny_settings(**RUN), path)
    return path


@pytest.fixture(scope='module')
def model(workdir):
    return sd.load(workdir)


# ---- the settings record describes the checkpoints ----

def test_after_a_failed_first_run_the_api_reads_the_run_that_saved(workdir, model):
    record = json.load(open(workdir / 'config_train.json'))
    assert record['data']['dataset'] == 'digits' and model.settings == tiny_settings(**RUN)
    assert model.step == 2 and model.describe().startswith('1-level pooling chain')


def test_a_resume_with_other_cutoffs_updates_the_record_and_keeps_the_earlier_one(workdir, tmp_path):
    run = shutil.copytree(workdir, tmp_path / 'run')
    before = workdir_files(run)
    train.train(tiny_settings(**{**RUN, 'training__n_iters': 4, 'subspace__cutoffs': (0.3,)}), run)
    assert sd.load(run).settings.subspace.cutoffs == (0.3,) and sd.load(run).step == 4
    # Step 2 was made with the earlier cutoffs: its settings are the record the resume replaced, kept as it was.
    assert sd.load(run, step=2).settings.subspace.cutoffs == (0.5,)
    assert (run / 'config_train_before_step_4.json').read_bytes() == (workdir / 'config_train.json').read_bytes()
    after = workdir_files(run)
    assert all(after[name] == digest for name, digest in before.items() if name.startswith('checkpoints/archive/2/'))


def test_a_refused_training_in_an_imported_workdir_leaves_it_byte_identical(tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f'{i}.png')
    overrides = {'model.nf': 8, 'model.num_res_blocks': 1, 'data.image_size': 16, 'subspace.levels': 1,
                 'subspace.cutoffs': (0.4,), 'data.dataset': 'folder', 'data.data_dir': str(images)}
    from configs import cifar10_vp_ddpmpp
    config = cifar10_vp_ddpmpp.get_config()
    for key, value in overrides.items():
        section, name = key.split('.')
        config[section][name] = value
    run = tmp_path / 'run'
    import_checkpoint.import_checkpoint(Settings.from_config(config), run, f'{REF}/vp_16.pth', 0)
    before = workdir_files(run)
    assert json.load(open(run / 'config_import.json'))['model']['nf'] == 8

    flags = [f'--config.{k}={v}' for k, v in {**overrides, 'model.nf': 16}.items()]
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--mode=train', f'--workdir={run}',
                          '--config=' + os.path.join(ROOT, 'configs', 'cifar10_vp_ddpmpp.py'), *flags],
                         env=main_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and 'Traceback' not in out.stderr and last.startswith('error: ') \
        and 'model.nf: checkpoint 8, config 16' in last, out.stderr[-2000:]
    after = workdir_files(run)
    assert {name: after.get(name) for name in before} == before
    assert not [f for f in set(after) - set(before) if f.startswith('config')]  # no record of the refused run
    model = sd.load(run)  # the intact checkpoint, with the settings it was imported with
    assert model.describe() == 'full space' and model.settings.network.nf == 8 and model.step == 1


# ---- workdirs the API cannot use: one ValueError naming the workdir (or the file) and the fix ----

def _half_written(tmp_path):
    """A workdir that holds a settings record but no checkpoint (an older version's record of a failed run)."""
    path = tmp_path / 'half'
    path.mkdir()
    json.dump(tiny_config(**RUN).to_dict(), open(path / 'config_train.json', 'w'))
    return path


def _foreign(tmp_path):
    path = tmp_path / 'foreign'
    path.mkdir()
    json.dump({'lr': 0.1, 'epochs': 3}, open(path / 'config_train.json', 'w'))
    return path


def _no_record(workdir, tmp_path):
    path = shutil.copytree(workdir, tmp_path / 'no_record')
    os.remove(path / 'config_train.json')
    return path


@pytest.mark.parametrize('case,expected', [
    ('missing', r"^workdir='.*missing': does not exist: takes the path of a run's directory"),
    ('file', r"^workdir='.*a_file': is a file: takes a run's directory"),
    ('empty', r"^workdir='.*empty': holds no checkpoint: train \(main.py --mode=train\) or import"),
    ('half-written', r"^workdir='.*half': no checkpoints in .*half \(level 0\): train that level there first"),
    ('foreign', r'^config.model is missing: not a config of this project'),
    ('no record', r'^settings record .*no_record/config_train.json does not exist: pass config='),
    ('config missing', r"^config='nothere.py': no such file: takes a config file \(.py with get_config\(\)\), a "
                       r'settings record \(.json\) or a ConfigDict'),
    ('config without get_config', r"^config='.*not_a_config.py': has no get_config\(\)"),
    ('config that raises', r"^config='.*raises.py': cannot be loaded \(NameError: name 'oops' is not defined\)"),
    ('config of another type', r'^config=3: takes a config file'),
])
def test_unusable_workdirs_and_configs_are_one_line(workdir, tmp_path, case, expected):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'a_file').write_text('x')
    (tmp_path / 'not_a_config.py').write_text('x = 1\n')
    (tmp_path / 'raises.py').write_text('oops\n')
    call = {
        'missing': lambda: sd.load(tmp_path / 'missing'),
        'file': lambda: sd.load(tmp_path / 'a_file'),
        'empty': lambda: sd.load(tmp_path / 'empty'),
        'half-written': lambda: sd.load(_half_written(tmp_path)),
        'foreign': lambda: sd.load(_foreign(tmp_path)),
        'no record': lambda: sd.load(_no_record(workdir, tmp_path)),
        'config missing': lambda: sd.load(workdir, config='nothere.py'),
        'config without get_config': lambda: sd.load(workdir, config=str(tmp_path / 'not_a_config.py')),
        'config that raises': lambda: sd.load(workdir, config=str(tmp_path / 'raises.py')),
        'config of another type': lambda: sd.load(workdir, config=3),
    }[case]
    with pytest.raises(ValueError) as e:
        call()
    assert re.search(expected, str(e.value)) and '\n' not in str(e.value), str(e.value)


def test_config_takes_a_settings_record_and_a_mapping(workdir, model):
    assert sd.load(workdir, config=str(workdir / 'config_train.json')).settings == model.settings
    assert sd.load(workdir, config=tiny_config(**RUN).to_dict()).settings == model.settings


# ---- arguments: one ValueError '<argument>=<got>: takes ...' ----

LEVELS = r'takes \(0,\) \(full space\), \(0, 1\) \(the chain\) or one level \(k,\) of 0..1'
BAD_ARGUMENTS = [
    # (call on the loaded model m / the workdir w, the start of the message)
    ('load(w, levels=(5,))', r'^levels=\(5,\): ' + LEVELS),
    ('load(w, levels=1)', r'^levels=1: ' + LEVELS),
    ('load(w, levels=())', r'^levels=\(\): ' + LEVELS),
    ('load(w, levels=(0, 2))', r'^levels=\(0, 2\): ' + LEVELS),
    ('load(w, step=-1)', r'^step=-1: takes a whole number >= 0'),
    ("load(w, step='latest')", r"^step='latest': takes a whole number >= 0"),
    ('m.sample(-1)', r'^n=-1: takes a whole number >= 1'),
    ('m.sample(0)', r'^n=0: takes a whole number >= 1'),
    ('m.sample(2.5)', r'^n=2.5: takes a whole number >= 1'),
    ("m.sample('4')", r"^n='4': takes a whole number >= 1"),
    ('m.sample(2, seed=-1)', r'^seed=-1: takes a whole number >= 0'),
    ('m.sample(2, seed=1.5)', r'^seed=1.5: takes a whole number >= 0'),
    ('m.sample(2, seed=2 ** 40)', r'^seed=1099511627776: takes a whole number in \[0, 2\^32\)'),
    ('m.sample(True)', r'^n=True: takes a whole number >= 1'),
    ("m.sample(2, method='foo')", r"^method='foo': takes one of pc, ode, ode_heun, dpm_solver\+\+"),
    ("m.sample(2, method='dpm_solver++', nfe=0)", r'^nfe=0: is below the smallest budget dpm_solver\+\+ can keep'),
    ("m.sample(2, method='dpm_solver++', nfe=1)", r'^nfe=1: is below the smallest budget'),
    ("m.sample(2, method='dpm_solver++', nfe=-4)", r'^nfe=-4: is below the smallest budget'),
    ("m.sample(2, method='dpm_solver++', nfe=float('nan'))", r'^nfe=nan: takes a finite number'),
    ("m.effective_nfe('ode_heun', nfe=3)", r'^nfe=3: is below the smallest budget ode_heun can keep on this model'),
    ('m.sample(2, nfe=8)', r"^nfe=8: does not apply to method 'pc', which takes steps="),
    ("m.sample(2, method='dpm_solver++', steps=8)", r"^steps=8: does not apply to method 'dpm_solver\+\+', which "
                                                    r'takes nfe='),
    ('m.sample(2, steps=1)', r'^steps=1: takes a whole number >= 2'),
    ('m.score(x, 2.0)', r'^t=2.0: takes one time in \(0, 1\]'),
    ('m.score(x, 0)', r'^t=0: takes one time in \(0, 1\]'),
    ('m.score(x, -0.1)', r'^t=-0.1: takes one time in \(0, 1\]'),
    ("m.score(x, float('nan'))", r'^t=nan: takes one time in \(0, 1\]'),
    ('m.score(x[:, :4, :4], 0.5)', r'^x \(float32, shape \(2, 4, 4, 1\)\): takes model-space arrays of shape '
                                   r'\(B, 8, 8, 1\) with B >= 1'),
    ('m.score(x[0], 0.5)', r'^x \(float32, shape \(8, 8, 1\)\): takes model-space arrays of shape'),
    ('m.score(x[:0], 0.5)', r'^x \(float32, shape \(0, 8, 8, 1\)\): takes model-space arrays'),
    ('m.score(x * np.nan, 0.5)', r'^x \(float32, shape \(2, 8, 8, 1\)\): holds 128 NaN or infinite value'),
    ('m.project(x, 2)', r"^k=2: takes a level of the model's 1-level chain, 0..1"),
    ('m.project(x, -1)', r'^k=-1: takes a level'),
    ('m.project(x, 1.5)', r'^k=1.5: takes a level'),
    ('m.project(x[:, :4, :4], 1)', r'^x \(float32, shape \(2, 4, 4, 1\)\): takes full-space arrays of shape'),
    ('m.embed(x, 1)', r'^y \(float32, shape \(2, 8, 8, 1\)\): takes level-1 coordinates of shape \(B, 4, 4, 1\)'),
    ('m.bits_per_dim(images * 2 - 1)', r'^images \(float64, shape \(2, 8, 8, 1\)\): has values in \[-1, 1\]: '
                                       r'takes images in \[0, 1\]'),
    ('m.bits_per_dim(images * np.nan)', r'^images \(float64, shape \(2, 8, 8, 1\)\): holds 128 NaN'),
    ('m.bits_per_dim(images[:0])', r'^images \(float64, shape \(0, 8, 8, 1\)\): takes images in \[0, 1\] of shape'),
    ('m.bits_per_dim(np.zeros((2, 16, 16, 1)))', r'^images \(float64, shape \(2, 16, 16, 1\)\): takes images'),
    ('m.bits_per_dim(np.round(images * 255).astype(np.int64))',
     r'^images \(int64, shape \(2, 8, 8, 1\)\): takes float images in \[0, 1\] \(what sample returns\) or uint8'),
    ('m.bits_per_dim(images, seed=-3)', r'^seed=-3: takes a whole number >= 0'),
    ("save_grid(images, 'grid')", r"^path='grid': has no extension: add .png \(or another format Pillow writes"),
    ("save_grid(images, 'grid.txt')", r"^path='grid.txt': has the extension .txt, which names no image format Pillow "
                                      r'writes: add .png'),
    ('load(w, compile_cache=3)', r"^compile_cache=3: takes a directory, or '' to run without the cache"),
]


@pytest.mark.parametrize('call,expected', BAD_ARGUMENTS, ids=[c for c, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_one_value_error_naming_them(workdir, model, call, expected):
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)) / 255.
    x = np.asarray(model.to_model_space(images))
    namespace = {'m': model, 'w': workdir, 'load': sd.load, 'save_grid': sd.save_grid, 'np': np, 'x': x,
                 'images': images}
    with pytest.raises(ValueError) as e:
        eval(call, namespace)  # noqa: S307 -- the calls of the table above
    assert re.search(expected, str(e.value)) and '\n' not in str(e.value), str(e.value)


def test_the_smallest_budget_is_the_one_the_solver_keeps(model):
    with pytest.raises(ValueError) as e:
        model.effective_nfe('dpm_solver++', nfe=2)
    floor = float(re.search(r'takes nfe >= ([\d.]+)', str(e.value)).group(1))
    # One step per stage of the 1-level chain (4x4 of 8x8 above the cutoff, 8x8 below) and the denoising call.
    assert floor == 1 / 4 + 1 + 1 and model.effective_nfe('dpm_solver++', nfe=floor) == floor


def test_a_model_of_one_level_names_the_times_and_levels_it_serves(workdir, model):
    level1 = sd.load(workdir, levels=(1,))
    x = np.asarray(model.to_model_space(np.full((2, 8, 8, 1), 0.5)))
    np.testing.assert_allclose(level1.score(x, 0.9), model.score(x, 0.9), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r'^t=0.1: lies at level 0 of the chain, whose network this model does not '
                                         r'hold \(levels \[1\]\): takes t in \(0.5, 1\], or load level 0 too'):
        level1.score(x, 0.1)
    with pytest.raises(ValueError, match=r'^levels=\(1,\): bits/dim integrates over the whole time range'):
        level1.bits_per_dim(np.full((2, 8, 8, 1), 0.5))
    # Its budget's floor: one DPM-Solver++ step and the denoising call, both on level 1 (each 1/4 of a full call).
    assert level1.effective_nfe('dpm_solver++', nfe=0.5) == 0.5
    with pytest.raises(ValueError, match=r'^nfe=0.4: is below the smallest budget dpm_solver\+\+ can keep on this '
                                         r'model \(0.5: '):
        level1.effective_nfe('dpm_solver++', nfe=0.4)


def test_uint8_images_are_taken_as_a_png_gives_them(model):
    pixels = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    np.testing.assert_array_equal(model.to_model_space(pixels), model.to_model_space(pixels / 255.))
    with pytest.raises(ValueError, match=r'has values in \[\d+, \d+\]: takes images in \[0, 1\]'):
        model.to_model_space(pixels.astype(np.float32))  # floats on the 0..255 scale are not taken as pixels


@pytest.mark.parametrize('call,name', [("m.sample(2, method='dpm_solver++', nfe=100000)", 'nfe=100000'),
                                       ('m.sample(2, steps=100000)', 'steps=100000')])
def test_a_budget_far_beyond_any_useful_one_is_refused_with_its_time(model, call, name):
    with pytest.raises(ValueError) as e:
        eval(call, {'m': model})  # noqa: S307
    message = str(e.value)
    # The largest budget of at most 10,000 effective NFE per sample: PC's steps scale its cost linearly.
    limit = 'nfe <= 10,000' if name.startswith('nfe') else \
        f'steps <= {int(100000 * 10_000 / model.effective_nfe(steps=100000)):,}'

    assert re.match(rf'^{re.escape(name)}: [\d,]+ effective NFE per sample would take about \d+m\d\ds for 2 '
                    rf'sample\(s\) here \([\d.]+ ms per full-space network call\), in one call that reports no '
                    rf'progress: far beyond any useful budget .*: takes {re.escape(limit)}', message), message
    cost = float(re.search(r'([\d,]+) effective NFE', message).group(1).replace(',', ''))
    assert cost > 10_000 and '\n' not in message


def test_another_runs_config_is_a_value_error_naming_config(workdir):
    with pytest.raises(ValueError) as e:
        sd.load(workdir, config=tiny_config(**RUN, model__nf=16))
    assert type(e.value) is ValueError and '\n' not in str(e.value)
    assert re.match(r'^config \(a ConfigDict\): the checkpoint at step 2 in .* was made with other settings '
                    r'\(model.nf: checkpoint 8, config 16\): takes the config it was made with, or leave config= out',
                    str(e.value)), str(e.value)


def test_every_array_comes_back_as_numpy(model):
    images = model.sample(2, method='dpm_solver++', nfe=8, seed=3)  # bits_per_dim: numpy by construction
    x = model.to_model_space(images)
    outputs = [images, x, model.score(x, 0.5), model.project(x, 1), model.embed(model.project(x, 1), 1)]
    assert all(type(a) is np.ndarray and a.dtype == np.float32 for a in outputs), [type(a) for a in outputs]


def test_samples_repeat_for_a_seed_and_which_samplers_draw_a_prefix_of_a_larger_batch(model):
    two = model.sample(2, method='dpm_solver++', nfe=8, seed=3)
    np.testing.assert_array_equal(model.sample(2, method='dpm_solver++', nfe=8, seed=3), two)
    # As docs/api.md says: each element's noise depends on its index alone, so a fixed-step ODE solver's first two of
    # four are the two; PC's corrector takes its step size from the batch's mean gradient norm (as score-SDE), so
    # its samples depend on the whole batch (compared before clipping to [0, 1]).
    np.testing.assert_allclose(model.sample(4, method='dpm_solver++', nfe=8, seed=3)[:2], two, atol=1e-5)
    draw = lambda n: np.asarray(model.sampler('pc', steps=4).sample(model.params, jax.random.PRNGKey(3), n)[0])  # noqa
    assert not np.allclose(draw(4)[:2], draw(2), atol=1e-3)
