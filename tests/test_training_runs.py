"""benchmarks/training_runs.py on a new machine: runs its committed result holds (scored at the same step and
sampling seeds) are carried into the report instead of trained again; anything scored here replaces them."""
import json
import os
import sys
from argparse import Namespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import training_runs as tr  # noqa: E402
from steps import Steps  # noqa: E402


def _variant(fd):
    stats = {'classifier_fd': fd, 'noise_share': 0.1}
    return {'runs': [stats, stats, stats], 'mean': stats, 'std': {k: 0.0 for k in stats}}


def _entry(fd, spaces=('full space',)):
    return {'variants': {f'{space}, {m}': _variant(fd) for space in spaces for m in tr.METHODS}, 'flow': None}


def _committed(tmp_path, monkeypatch, step=10000):
    result = {'step': step, 'sampling_seeds': [0, 1, 2],
              'learning_rates': {'lr 0.0002': _entry(9.9), 'lr 0.001': _entry(9.2)},
              'training_runs': {'1': _entry(5.0, tr.SPACES)}, 'early_stages_training_seed_42': {}}
    path = tmp_path / 'training_runs.json'
    path.write_text(json.dumps(result))
    monkeypatch.setattr(tr, 'RESULT', str(path))
    return result


def _args(tmp_path, step=10000):
    return Namespace(step=step, seeds=[0, 1, 2], long_warmup=1e-3, workdir=str(tmp_path / 'runs'))


def test_runs_in_the_committed_result_are_carried_and_no_others(tmp_path, monkeypatch):
    _committed(tmp_path, monkeypatch)
    args = _args(tmp_path)
    runs = tr._runs(args)
    before = tr._committed(args)
    carried = {run.label for run in runs if tr._carried(run, before)}
    assert carried == {'lr 0.0002', 'training seed 1'}
    assert tr._carried(tr._study_rate(runs), before)  # seed 42's full space at the study's rate
    assert not tr._carried(tr._seed_run(runs, 42), before)  # its chains and early stages are not in it
    # scored at another step (or other sampling seeds): nothing of it stands for this command's runs
    assert not any(tr._carried(run, tr._committed(_args(tmp_path, step=5000))) for run in runs)


def _report(tmp_path, monkeypatch) -> dict:
    """The result the report would save (nothing written to benchmarks/results, no figure)."""
    written = {}
    monkeypatch.setattr(tr, 'save_result', lambda name, result: written.update(result))
    monkeypatch.setattr(tr, '_figure', lambda result: None)
    args = _args(tmp_path)
    tr._report(lambda *p: os.path.join(args.workdir, *p), tr._runs(args), args, Steps({}))
    return written


def test_the_report_keeps_what_an_earlier_machine_scored(tmp_path, monkeypatch):
    committed = _committed(tmp_path, monkeypatch)
    written = _report(tmp_path, monkeypatch)
    assert list(written['learning_rates']) == ['lr 0.001', 'lr 0.0002']  # the study's rate first
    assert written['learning_rates'] == committed['learning_rates']
    assert written['training_runs'] == committed['training_runs']


def test_a_run_scored_here_replaces_its_committed_entry(tmp_path, monkeypatch):
    committed = _committed(tmp_path, monkeypatch)
    monkeypatch.setattr(tr, '_scored', lambda w, spaces, args: w().endswith('lr_0.0002'))
    monkeypatch.setattr(tr, '_variant_scores', lambda w, run, args: _entry(7.0)['variants'])
    written = _report(tmp_path, monkeypatch)
    rescored = written['learning_rates']['lr 0.0002']
    assert rescored['variants'] == _entry(7.0)['variants'] and rescored['flags'] == {'optim.lr': 2e-4}
    assert written['learning_rates']['lr 0.001'] == committed['learning_rates']['lr 0.001']


def test_the_early_stage_table_puts_the_study_beside_the_rerun():
    def flow(ode, restart):
        return {'restarts': [{'sigma': s, 'noise_share': restart} for s in (1, 2, 8, 16)], 'ode_noise_share': ode}

    names = [f'{space}, {m}' for space in tr.SPACES for m in tr.METHODS]
    study = {'variants': [{'variant': v, 'stages': [{'step': s, 'runs': [{'seed': 1, 'classifier_fd': -1.0,
                                                                          'noise_share': -1.0},
                                                                         {'seed': 0, 'classifier_fd': 80.0 + i,
                                                                          'noise_share': 1.0}]}
                                                    for s in tr.EARLY_STAGES]} for i, v in enumerate(names)],
             'flow': {str(s): {'trajectories': {'full space, adaptive ode': {'noise_share': 0.9}},
                               'restarts': flow(0, 0.7)['restarts'], 'ema_dsm_loss': {'0': 40.0}, 'samples': 64}
                      for s in tr.EARLY_STAGES}}
    early = {str(s): {'variants': {v: {'classifier_fd': 5.0 + s / 1000, 'noise_share': 0.25} for v in names},
                      'flow': flow(0.5, 0.3)} for s in tr.EARLY_STAGES}
    lines = tr.early_table({'early_stages_training_seed_42': early}, study).splitlines()
    assert len(lines) == 2 + len(names) + 2
    assert lines[3] == '| full space, dpm_solver++ 20 | 81.00 / 1.00 | 7.50 / 0.25 | 81.00 / 1.00 | 10.00 / 0.25 |'
    assert lines[-2] == '| full space, adaptive ODE: noise share | 0.90 | 0.50 | 0.90 | 0.50 |'
    assert lines[-1].endswith('| 0.70 / 0.70 / 0.70 | 0.30 / 0.30 / 0.30 | 0.70 / 0.70 / 0.70 | 0.30 / 0.30 / 0.30 |')
    # a stage not rescored yet is left out, not shown empty
    del early['5000']
    assert '5,000' not in tr.early_table({'early_stages_training_seed_42': early}, study)
