"""Training: data-parallel equality, two processes, preemption (SIGKILL / SIGTERM), real data paths, guards."""
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from subspace_diffusion.jobs import train
from subspace_diffusion.run import loading
from subspace_diffusion.run.checkpoints import CheckpointError, Checkpoints
from subspace_diffusion.run.experiment import Experiment
from tiny import tiny_flags, tiny_settings

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _env(**extra):
    return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join([ROOT, TESTS]), **extra)


def _main_cmd(workdir, **overrides):
    return [sys.executable, os.path.join(ROOT, 'main.py'), '--mode=train', f'--workdir={workdir}',
            *tiny_flags(**overrides)]


def _leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def _assert_same(a, b, **tol):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tol)


EIGHT_DEVICES = r'''
import jax, numpy as np
from jax.experimental import multihost_utils
from subspace_diffusion.jobs import train
from subspace_diffusion.run import data, parallel, train_state
from subspace_diffusion.run.experiment import Experiment
from tiny import tiny_settings
assert jax.device_count() == 8
settings = tiny_settings()  # one level: the sharding is the same for every network
exp = Experiment.build(settings, settings.subspace.train_levels())
tx = train_state.make_optimizer(settings.optim, exp.networks.param_keys)
it = data.get_dataset(settings.data, 'train', 16)
batches = [np.stack([next(it)['image'] for _ in range(2)]) for _ in range(2)]
results = []
for devices in (jax.devices(), jax.devices()[:1]):
    mesh = parallel.make_mesh(devices)
    state = jax.jit(lambda k: train_state.init_state(exp.networks, tx, k), out_shardings=parallel.replicated(mesh))(
        jax.random.PRNGKey(0))
    step = train.make_train_step(exp.loss, tx, mesh, train_state.learning_rate(settings.optim),
                                 settings.training.ema_rate, 0)
    losses = []
    for b in batches:
        state, m = step(state, parallel.global_batch(b, mesh, leading_axes=1))
        losses.append(np.asarray(m['loss']))
    assert len(state.params['level_0']['all_modules_3']['kernel'].sharding.device_set) == len(devices)
    results.append((np.concatenate(losses), [np.asarray(x) for x in jax.tree.leaves((state.params, state.ema_params))]))
(l8, p8), (l1, p1) = results
np.testing.assert_allclose(l8, l1, rtol=1e-5)
assert not np.allclose(l8[0], l8[-1])
for a, b in zip(p8, p1):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
try:
    parallel.check_batch_size(12, parallel.make_mesh())
    raise SystemExit('12 examples over 8 devices was accepted')
except ValueError as e:
    assert 'not divisible by the 8 device(s)' in str(e), e
print('OK')
'''


def test_eight_devices_match_one_device():
    out = subprocess.run([sys.executable, '-c', EIGHT_DEVICES], capture_output=True, text=True, timeout=400,
                         env=_env(XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'))
    assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]


TWO_PROCESSES = r'''
import sys, jax, numpy as np
from subspace_diffusion.jobs import train
from subspace_diffusion.run import parallel
pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
parallel.initialize_distributed(f'localhost:{port}', 2, pid)
from tiny import tiny_settings
assert jax.process_count() == 2 and jax.device_count() == 2
state = train.train(tiny_settings(training__n_iters=4), workdir)
local = lambda tree: [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(tree)]
np.savez(f'{workdir}/params_{pid}.npz', *local(state.params), *local(state.ema_params))
print('OK', pid)
'''


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def test_two_processes_train_identically_and_restore_in_one(tmp_path):
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, '-c', TWO_PROCESSES, str(i), port, str(tmp_path)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0 and 'OK' in stdout, stderr[-3000:]
    with np.load(tmp_path / 'params_0.npz') as f0, np.load(tmp_path / 'params_1.npz') as f1:
        p0 = [f0[k] for k in f0.files]
        for k in f0.files:
            np.testing.assert_array_equal(f0[k], f1[k])
    # The checkpoint written by both processes restores in a single process (the EMA half of the saved list).
    ema, step = _ema(tiny_settings(), tmp_path)
    assert step == 4
    for a, b in zip(_leaves(ema), p0[len(p0) // 2:], strict=True):
        np.testing.assert_array_equal(a, b)


def _start(cmd, log):
    # Output goes to a file: an unread pipe fills up and blocks the child.
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=open(log, 'w'), text=True)


def _wait_for(predicate, proc, log, timeout=300):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, open(log).read()[-3000:]
        assert time.time() - t0 < timeout, 'timed out'
        time.sleep(0.05)


def _preempt_steps(workdir):
    path = os.path.join(workdir, 'checkpoints', 'preempt')
    return [int(s) for s in os.listdir(path) if s.isdigit()] if os.path.isdir(path) else []


RUN = dict(training__n_iters=120, training__snapshot_freq=60, training__snapshot_freq_for_preemption=10,
           training__log_freq=10)


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    ref = _start(_main_cmd(full, **RUN), tmp_path / 'full.log')
    run = _start(_main_cmd(killed, **RUN), tmp_path / 'killed.log')
    _wait_for(lambda: _preempt_steps(killed), run, tmp_path / 'killed.log')
    run.send_signal(signal.SIGKILL)
    run.wait()
    stopped_at = max(_preempt_steps(killed))
    assert stopped_at < 60, 'the run got past its first archive checkpoint before it could be killed'
    again = subprocess.run(_main_cmd(killed, **RUN), env=_env(), capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f'resuming from the checkpoint at step {stopped_at}' in again.stderr
    assert ref.wait(timeout=400) == 0, open(tmp_path / 'full.log').read()[-3000:]
    settings = tiny_settings()
    (a, step_a), (b, step_b) = _ema(settings, full), _ema(settings, killed)
    assert step_a == step_b == 120
    _assert_same(a, b, rtol=1e-6, atol=1e-7)


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    overrides = dict(RUN, training__snapshot_freq_for_preemption=100)
    log = tmp_path / 'run.log'
    run = _start(_main_cmd(tmp_path / 'run', **overrides), log)
    # The first progress line means training is under way; no checkpoint is due before step 60.
    _wait_for(lambda: 'it/s' in open(log).read(), run, log)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 143, open(log).read()[-3000:]
    steps = _preempt_steps(tmp_path / 'run')
    assert len(steps) == 1 and 0 < steps[0] < 60 and f'SIGTERM: saved step {steps[0]}' in open(log).read()


def test_trains_through_tfds_and_from_a_folder(tmp_path):
    tfds = pytest.importorskip('tensorflow_datasets')
    settings = tiny_settings(data__dataset='cifar10', data__num_channels=3, data__random_flip=True,
                             training__n_iters=4)
    with tfds.testing.mock_data(num_examples=32):
        state = train.train(settings, tmp_path / 'cifar')
    assert int(state.step) == 4 and state.params['level_0']['all_modules_3']['kernel'].shape[-2] == 3
    folder = tmp_path / 'images'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # photos of any size and mode are cropped and resized to data.image_size
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    state = train.train(tiny_settings(data__dataset='folder', data__num_channels=3, training__n_iters=4,
                                      data__data_dir=str(folder)), tmp_path / 'folder')
    assert int(state.step) == 4 and np.isfinite(_leaves(state.params)[0]).all()
    assert os.listdir(tmp_path / 'folder' / 'checkpoints' / 'archive') == ['4']


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train.train(tiny_settings(training__n_iters=4), tmp_path)
    good, _ = _ema(tiny_settings(), tmp_path)
    with pytest.raises(FloatingPointError, match=r'non-finite .* at step 5.*checkpoint \(step 4\) is intact'):
        train.train(tiny_settings(training__n_iters=8, optim__lr=3e38, optim__warmup=0), tmp_path)  # overflows
    ema, step = _ema(tiny_settings(), tmp_path)
    assert step == 4
    _assert_same(ema, good)


def test_all_levels_and_shared_parameters(tmp_path):
    exp = Experiment.build(tiny_settings(subspace__levels=1), levels=(0, 1))
    assert exp.networks.param_keys == ('level_0', 'level_1')
    shared = Experiment.build(tiny_settings(subspace__shared_params=True), levels=(0, 1), shared=True)
    assert shared.networks.param_keys == ('shared',)
    params = shared.networks.init_params(jax.random.PRNGKey(0))
    # One parameter set serves both resolutions; both levels' losses reach it.
    total, per_level = shared.loss(params, np.zeros((4, 8, 8, 1), np.float32), jax.random.PRNGKey(1))
    assert set(per_level) == {0, 1} and np.isfinite(total)
    grads = jax.grad(lambda p: shared.loss(p, np.ones((4, 8, 8, 1), np.float32), jax.random.PRNGKey(1))[1][1])(
        params)
    assert sum(np.abs(g).sum() for g in _leaves(grads)) > 0
    state = train.train(tiny_settings(subspace__train_level=-1, subspace__shared_params=True, training__n_iters=2,
                                    training__snapshot_freq=2, training__snapshot_sampling=True), tmp_path)
    assert set(state.params) == {'shared'}
    assert os.path.exists(tmp_path / 'samples' / 'step_0000002.png')


def test_bad_inputs_are_clear_errors_before_compiling(tmp_path):
    with pytest.raises(ValueError, match='cannot support 9 pooling level'):
        train.train(tiny_settings(subspace__levels=9, subspace__cutoffs=tuple(0.1 * i for i in range(1, 10))),
                    tmp_path)
    with pytest.raises(ValueError, match='train_level: 3 is not a level'):
        train.train(tiny_settings(subspace__train_level=3), tmp_path)
    with pytest.raises(ValueError, match='not a multiple of training.n_jitted_steps'):
        train.train(tiny_settings(training__log_freq=3), tmp_path)
    with pytest.raises(FileNotFoundError, match='dataset folder not found'):
        train.train(tiny_settings(data__dataset='folder', data__data_dir=str(tmp_path / 'missing')), tmp_path)
    # A checkpoint from another model layout, then an unreadable one: clear errors naming the fix.
    train.train(tiny_settings(training__n_iters=2), tmp_path / 'run')
    with pytest.raises(CheckpointError, match=r'other settings: subspace.train_level: checkpoint \[0\], config \[1\]'):
        train.train(tiny_settings(training__n_iters=4, subspace__train_level=1), tmp_path / 'run')
    state_dir = tmp_path / 'run' / 'checkpoints' / 'archive' / '2' / 'state'
    for root, _, files in os.walk(state_dir):
        for f in files:
            open(os.path.join(root, f), 'wb').close()
    with pytest.raises(CheckpointError, match='cannot be read.*fresh --workdir'):
        train.train(tiny_settings(training__n_iters=4), tmp_path / 'run')
    assert Checkpoints(tmp_path / 'run', read_only=True).latest_step() == 2


def _ema(settings, workdir):
    """(EMA parameters by level, step) of the newest checkpoint of a workdir."""
    _, parts, step = loading.load_parts(settings, workdir)
    return parts['ema_params'], step


def test_main_train_writes_config_events_checkpoint_and_grid(tmp_path):
    out = subprocess.run(_main_cmd(tmp_path, training__n_iters=4, training__snapshot_sampling=True,
                                   subspace__train_level=-1), env=_env(), capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'it/s' in out.stderr and 'ETA' in out.stderr
    assert os.path.exists(tmp_path / 'config_train.json') and os.listdir(tmp_path / 'tensorboard')
    grid = np.asarray(Image.open(tmp_path / 'samples' / 'step_0000004.png'))
    assert grid.ndim == 2 and grid.std() > 0
    assert sorted(os.listdir(tmp_path / 'checkpoints' / 'archive')) == ['4']


def test_sampling_jobs_read_the_ema_parameters_alone(tmp_path):
    # A checkpoint trained with Adam; loaded for sampling under AdamW settings (another optimiser state tree):
    # the partial restore reads only the EMA entries, so it works and gives the same parameters, while restoring
    # the whole train state (as a resumed training does) must fail on the optimiser state.
    train.train(tiny_settings(training__n_iters=2), tmp_path)
    adam = loading.load_levels(tiny_settings(), (0,), tmp_path).params
    other = tiny_settings(optim__optimizer='AdamW', optim__weight_decay=0.1, optim__grad_clip=0.0)
    adamw = loading.load_levels(other, (0,), tmp_path).params
    _assert_same(adam, adamw, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match='cannot be read'):
        train.train(dataclasses.replace(other, training=dataclasses.replace(other.training, n_iters=4)), tmp_path)


def test_training_starts_from_weights_imported_at_step_0(tmp_path):
    # Initial weights written as a step-0 checkpoint (how benchmarks/reference_control's bisection trains ours from
    # the reference's initialisation): training restores them instead of drawing its own from the seed.
    from subspace_diffusion.jobs.import_checkpoint import _write
    settings = tiny_settings(training__n_iters=2)
    exp = Experiment.build(settings, (0,))
    given = jax.tree.map(lambda p: p + 0.5, exp.networks.init_params(jax.random.PRNGKey(7))['level_0'])
    _write(settings, tmp_path, 0, (given, given), {'file': 'initial weights', 'step': 0, 'weights': 'ema'})
    state = train.train(settings, tmp_path)
    assert int(state.step) == 2
    _assert_same(state.params['level_0'], given, rtol=0, atol=0.05)  # two warm-up steps move little
    fresh = train.train(settings, tmp_path / 'fresh')
    assert max(np.abs(a - b).max() for a, b in zip(_leaves(fresh.params['level_0']), _leaves(given))) > 0.4
