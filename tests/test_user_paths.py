"""Paths a user takes that the other tests do not run, each run once on the tiny config: one subspace level trained
alone (from its cutoff, with its snapshot sampler) and evaluated with level 0 from another workdir; archive pruning;
bits/dim-only evaluation of several archived steps; --mode=fid_stats, then an evaluation reading those statistics
from eval.ref_stats_path; colourisation in full space and through the chain."""
import glob
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_settings

from subspace_diffusion import cli
from subspace_diffusion.jobs import conditional, evaluate, fid_stats, train
from subspace_diffusion.run.checkpoints import Checkpoints
from subspace_diffusion.run.experiment import Experiment

# Evaluation settings that keep it cheap: 8 samples, 4 bits/dim examples with a loose ODE tolerance.
EVAL = {'eval__num_samples': 8, 'eval__batch_size': 4, 'eval__bpd_num_examples': 4, 'eval__bpd_num_repeats': 1,
        'eval__ode_rtol': 1e-3, 'eval__ode_atol': 1e-3}


def _archived(workdir) -> list:
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        return ckpts.archived_steps()
    finally:
        ckpts.close()


@pytest.fixture(scope='module')
def level0(tmp_path_factory):
    """Level 0 alone: 6 steps, archived every 2, at most 2 archives kept."""
    path = tmp_path_factory.mktemp('level0')
    train.train(tiny_settings(training__n_iters=6, training__snapshot_freq=2, training__keep_checkpoints=2), path)
    return path


@pytest.fixture(scope='module')
def level1(tmp_path_factory):
    """Level 1 of the 1-level chain alone, 2 steps, with its snapshot grid."""
    path = tmp_path_factory.mktemp('level1')
    train.train(tiny_settings(subspace__train_level=1, training__n_iters=2, training__snapshot_freq=2,
                              training__snapshot_sampling=True), path)
    return path


def test_keep_checkpoints_prunes_the_oldest_archives(level0):
    assert _archived(level0) == [4, 6]  # steps 2, 4, 6 archived; 2 pruned


def test_one_subspace_level_trains_alone_from_its_cutoff(level1):
    settings = tiny_settings(subspace__train_level=1)
    exp = Experiment.build(settings, settings.subspace.train_levels())
    assert exp.levels == (1,) and exp.t_min(1) == settings.subspace.cutoffs[0] == 0.5  # t ~ U(t_1, T)
    assert Experiment.build(tiny_settings(subspace__train_from_cutoff=False), (0, 1)).t_min(1) == \
        settings.training.eps
    assert _archived(level1) == [2]
    # Its snapshot sampler (level 1 alone, shown up-projected) drew the grid of the archived step.
    assert np.asarray(Image.open(level1 / 'samples' / 'step_0000002.png')).std() > 0


def test_bits_per_dim_only_evaluation_of_several_steps_with_levels_from_two_workdirs(level0, level1, tmp_path):
    settings = tiny_settings(**EVAL, eval__enable_sampling=False, eval__enable_bpd=True, eval__begin_ckpt=0,
                             eval__end_ckpt=-1, eval__level_workdirs=(str(level0), str(level1)))
    results = evaluate.evaluate(settings, tmp_path)
    assert [m['step'] for m in results] == [4, 6]  # every kept archive of the level-0 workdir
    for m in results:
        assert m['checkpoints'] == {'0': {'workdir': str(level0), 'step': m['step']},
                                    '1': {'workdir': str(level1), 'step': 2}}
        assert m['space'].startswith('1-level pooling chain') and np.isfinite(m['bpd']) and m['bpd'] > 0
        assert 'num_samples' not in m and 'classifier_fd' not in m
        folder = tmp_path / 'eval' / f'step_{m["step"]}'
        assert (folder / 'metrics.json').exists() and not list(folder.glob('samples_*.npz'))
    assert results[0]['bpd'] != results[1]['bpd']  # two sets of parameters


def test_fid_stats_mode_then_evaluation_from_an_explicit_ref_stats_path(level0, level1, tmp_path):
    assert cli.MODES['fid_stats'] is fid_stats.fid_stats
    ref = tmp_path / 'reference'
    ref.mkdir()
    written = fid_stats.fid_stats(tiny_settings(), ref)
    stats_file, = glob.glob(str(ref / 'ref_stats_*.npz'))
    with np.load(stats_file) as f:
        assert int(f['num_examples']) == int(written['num_examples']) > 100
        np.testing.assert_array_equal(f['classifier_mu'], written['classifier_mu'])
    run = tmp_path / 'run'
    run.mkdir()
    for cached in ref.glob('proxy_classifier_*.npz'):  # the classifier fid_stats trained, not trained again
        shutil.copy(cached, run)
    settings = tiny_settings(**EVAL, eval__ref_stats_path=stats_file,
                             eval__level_workdirs=(str(level0), str(level1)))
    m, = evaluate.evaluate(settings, run)
    assert m['step'] == 6 and m['num_samples'] == 8
    assert np.isfinite(m['classifier_fd']) and np.isfinite(m['pixel_fd'])
    assert not list(run.glob('ref_stats_*.npz'))  # read from eval.ref_stats_path, not computed here


def test_colourisation_in_full_space_and_through_the_chain(tmp_path, caplog):
    # The job samples through the chain when every level is trained, else in full space: one workdir of each.
    # (What it keeps, the grey part, is checked on the exact Gaussian case in test_conditional.py, with and without
    # a subspace level; 2-step networks sample far outside [0, 1].)
    images = tmp_path / 'images'
    images.mkdir()
    for i, img in enumerate(np.random.default_rng(0).integers(30, 226, (2, 8, 8, 3), dtype=np.uint8)):
        Image.fromarray(img).save(images / f'photo{i}.png')
    # Grey digits train as RGB images.
    colour = {'data__num_channels': 3, 'eval__cond_input_dir': str(images), 'eval__batch_size': 2}
    results = {}
    for train_level in (-1, 0):
        workdir = tmp_path / f'train_level_{train_level}'
        train.train(tiny_settings(**colour, subspace__train_level=train_level, training__n_iters=2,
                                  training__snapshot_freq=2), workdir)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            out = conditional.colorize(tiny_settings(**colour, subspace__train_level=train_level), workdir)
        assert ('in the 1-level pooling chain 8x8x3 -> 4x4x3' if train_level == -1 else 'in the full space') \
            in caplog.text
        assert out.shape == (2, 8, 8, 3) and out.min() >= 0 and out.max() <= 1
        written = sorted(os.path.basename(p) for p in glob.glob(str(workdir / '**' / '*.png'), recursive=True))
        assert {'photo0.png', 'photo1.png', 'grid.png'} <= set(written), written
        results[train_level] = out
    assert np.abs(results[-1] - results[0]).max() > 1e-2  # the chain and the full-space sampler both ran
