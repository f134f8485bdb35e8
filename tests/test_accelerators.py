"""Accelerator features checked on the CPU: the persistent compilation cache across processes, bfloat16 compute
with float32 state, rematerialisation, and evaluation across two processes (jax.distributed on loopback)."""
import importlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_diffusion import cli
from subspace_diffusion.jobs import train
from subspace_diffusion.run import compilation
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Settings
from tiny import main_cmd, main_env, tiny_settings


def test_compilation_cache_is_written_and_hit_by_a_second_process(tmp_path):
    cache = tmp_path / 'cache'
    runs = []
    for name in ('first', 'second'):
        out = subprocess.run(main_cmd('--mode=train', f'--workdir={tmp_path / name}', f'--compile_cache={cache}',
                                      training__n_iters=2), env=main_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(out.stderr)
    assert os.listdir(cache) and 'compilation cache hit' not in runs[0]
    assert 'compilation cache hit' in runs[1] and 's of compilation saved' in runs[1]


def test_an_empty_compile_cache_flag_leaves_the_cache_off(tmp_path):
    # What main.py does with --compile_cache= (cli.main: compilation.enable(FLAGS.compile_cache)), in-process.
    flag = cli.FLAGS['compile_cache']
    assert flag.default == compilation.default_dir() and flag.parser.parse('') == ''
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update('jax_compilation_cache_dir', None)
        compilation.enable('')
        assert jax.config.jax_compilation_cache_dir is None
        compilation.enable(str(tmp_path / 'cache'))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'cache') and os.path.isdir(tmp_path / 'cache')
    finally:
        jax.config.update('jax_compilation_cache_dir', before)


def _shrunk(name, size=16, **model):
    config = importlib.import_module(f'configs.{name}').get_config()
    # Two resolutions (16 and 8 px, attention at 16) of the config's own block types and input/output pyramids.
    config.model.nf, config.model.num_res_blocks, config.model.ch_mult, config.data.image_size = 16, 1, (1, 2), size
    config.subspace.levels, config.subspace.cutoffs = 0, ()
    for key, value in model.items():
        config.model[key] = value
    return Settings.from_config(config)


@pytest.mark.parametrize('name', ['cifar10_ve_ncsnpp', 'cifar10_vp_ddpmpp'])
def test_bfloat16_outputs_are_within_tolerance_of_float32(name):
    f32, bf16 = _shrunk(name), _shrunk(name, dtype='bfloat16', sample_dtype='bfloat16')
    nets32, nets16 = Experiment.build(f32, (0,)).networks, Experiment.build(bf16, (0,)).networks
    params = nets32.init_params(jax.random.PRNGKey(0))
    # The zero-initialised output layers would make every output ~0: perturb all parameters.
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(1), a.shape), params)
    x = jax.random.uniform(jax.random.PRNGKey(2), (8, 16, 16, 3)) * (2 if f32.data.centered else 1)
    t = jnp.linspace(0.05, 0.95, 8)
    y32, y16 = nets32.score(params, 0)(x, t), nets16.score(params, 0)(x, t)
    assert y16.dtype == jnp.float32 and jax.tree.leaves(params)[0].dtype == jnp.float32
    relative = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
    # bfloat16 keeps 8 bits of mantissa (relative rounding 0.4%): measured 0.75% (NCSN++), 0.97% (DDPM++).
    assert 1e-4 < relative < 0.03, relative
    # sampling stays float32 unless asked: the same bfloat16-trained network in the default sample_dtype
    f32_sampling = Experiment.build(_shrunk(name, dtype='bfloat16'), (0,)).networks
    np.testing.assert_array_equal(f32_sampling.score(params, 0)(x, t), y32)


def _losses(tmp_path, **overrides):
    # Output layers initialised at scale 1, not ~0: the network's share of the loss is there from the first step.
    state = train.train(tiny_settings(training__n_iters=40, training__log_freq=2, model__init_scale=1.0,
                                      optim__warmup=10, training__snapshot_freq=40,
                                      training__snapshot_freq_for_preemption=40, **overrides), tmp_path)
    from tensorboard_events import scalars
    return state, np.array([v for _, v in sorted(scalars(tmp_path / 'tensorboard', 'train/loss').items())])


def test_bfloat16_training_tracks_float32(tmp_path):
    state32, loss32 = _losses(tmp_path / 'f32')
    state16, loss16 = _losses(tmp_path / 'bf16', model__dtype='bfloat16')
    # parameters, EMA and the optimiser state stay float32
    assert {x.dtype for x in jax.tree.leaves((state16.params, state16.ema_params, state16.opt_state))
            if hasattr(x, 'dtype') and x.dtype.kind == 'f'} == {jnp.dtype(jnp.float32)}
    assert len(loss32) == len(loss16) == 19 and loss16[-5:].mean() < loss16[:5].mean()  # it learns
    # The same data and noise each step: the curves differ by bfloat16 rounding alone. Measured: median 1e-4,
    # largest 5e-4 relative (XLA:CPU keeps some excess precision; an accelerator rounds more, still far below 2%).
    difference = np.abs(loss16 - loss32) / loss32
    assert 1e-6 < np.median(difference) and difference.max() < 0.02, difference


def test_remat_gives_the_same_gradients_and_keeps_less_for_the_backward_pass():
    grads, residual_bytes = {}, {}
    for remat in (False, True):
        # 8 and 4 px, attention at 8: every block kind of the 16 px network, compiled in a fraction of its time.
        settings = _shrunk('cifar10_ve_ncsnpp', size=8, remat=remat, num_res_blocks=2, attn_resolutions=(8,))
        exp = Experiment.build(settings, (0,))
        params = exp.networks.init_params(jax.random.PRNGKey(0))
        x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3))
        loss = lambda p: exp.loss(p, x, jax.random.PRNGKey(2))[0]  # noqa: E731
        grads[remat] = jax.jit(jax.grad(loss))(params)
        # What the forward pass keeps for the backward pass (the vjp's residuals), independent of the backend.
        residuals = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)
        residual_bytes[remat] = sum(math.prod(r.shape) * r.dtype.itemsize for r in jax.tree.leaves(residuals))
    for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert residual_bytes[True] < 0.5 * residual_bytes[False], residual_bytes


# ----------------------------------------------------------------------------- evaluation on two processes


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


EVAL = dict(subspace__train_level=-1, eval__num_samples=64, eval__batch_size=8, eval__enable_bpd=True,
            eval__bpd_num_examples=4, eval__bpd_num_repeats=1, eval__ode_rtol=1e-3, eval__ode_atol=1e-3)


def _two_processes(workdir):
    port = _free_port()
    return [subprocess.Popen(main_cmd('--mode=eval', f'--workdir={workdir}', f'--coordinator_address=localhost:{port}',
                                      '--num_processes=2', f'--process_id={i}', **EVAL), env=main_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _shards(workdir):
    folder = workdir / 'eval' / 'step_2'
    return [np.load(folder / f'samples_{i}.npz')['samples'] for i in range(8)], json.load(open(folder / 'metrics.json'))


def test_two_process_evaluation_equals_one_process_and_resumes_after_a_kill(trained_chain, tmp_path):
    one, two = (shutil.copytree(trained_chain, tmp_path / name) for name in ('one', 'two'))
    out = subprocess.run(main_cmd('--mode=eval', f'--workdir={one}', **EVAL), env=main_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    samples1, metrics1 = _shards(one)

    # Two processes, killed once some shards are in, then rerun: every shard is written by the two processes.
    procs = _two_processes(two)
    folder = two / 'eval' / 'step_2'
    deadline = time.time() + 300
    while not (folder / 'samples_1.npz').exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    kept = len(list(folder.glob('samples_*.npz')))
    assert 2 <= kept < 8 and not (folder / 'metrics.json').exists(), kept
    procs = _two_processes(two)
    logs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-2000:]
    assert f'resuming: {kept} of 8 sample batches already in' in logs[0]
    samples2, metrics2 = _shards(two)
    for a, b in zip(samples1, samples2, strict=True):
        np.testing.assert_array_equal(a, b)
    for key in ('pixel_fd', 'classifier_fd', 'classifier_kid', 'nfe_per_sample'):
        assert metrics2[key] == metrics1[key], key
    # The adaptive likelihood solve reduces over a batch split across processes: same value within its error.
    assert abs(metrics2['bpd'] - metrics1['bpd']) < 3 * metrics1['bpd_stderr']
