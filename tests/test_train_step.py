"""The compiled training step: the accelerators' `lax.scan` path equals CPU's unrolled one, and one optimiser step
(warm-up, clipping per parameter set, Adam's L2 or AdamW's decoupled weight decay, EMA) equals numpy by hand."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_settings

from subspace_diffusion import compiler
from subspace_diffusion.jobs import train
from subspace_diffusion.run import data, parallel, train_state
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Optim


def _run(loss_fn, tx, init, settings, batches, unrolled):
    """Fresh state init(key), then one compiled call per batch -> (state, [metrics per call]).

    The programs are the ones `train.train` compiles for the same settings (init, and the unrolled step), so in
    the suite they come from the compilation cache; only the scan path compiles anew.
    """
    mesh = parallel.make_mesh()
    step = train.make_train_step(loss_fn, tx, mesh, train_state.learning_rate(settings.optim),
                                 settings.training.ema_rate, settings.seed, unrolled=unrolled)
    state = compiler.jit(init, out_shardings=parallel.replicated(mesh))(train_state.init_key(settings.seed))
    metrics = []
    for b in batches:
        state, m = step(state, parallel.global_batch(b, mesh, leading_axes=1))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def test_scan_path_equals_the_unrolled_path_on_the_real_network():
    # The tiny network's DSM loss: the keys of each step (time, noise) must follow the state's step in both
    # paths. Two calls of 2 steps, so the scan also carries the state across calls.
    settings = tiny_settings()
    exp = Experiment.build(settings, settings.subspace.train_levels())
    tx = train_state.make_optimizer(settings.optim, exp.networks.param_keys)
    it = data.get_dataset(settings.data, 'train', settings.training.batch_size)
    batches = [np.stack([next(it)['image'] for _ in range(2)]) for _ in range(2)]
    runs = [_run(exp.loss, tx, lambda k: train_state.init_state(exp.networks, tx, k), settings, batches, unrolled)
            for unrolled in (True, False)]
    (s_unrolled, m_unrolled), (s_scan, m_scan) = runs
    assert int(s_scan.step) == int(s_unrolled.step) == 4
    assert set(m_scan[0]) == set(m_unrolled[0]) >= {'loss', 'loss_level_0', 'grad_norm', 'param_norm', 'lr'}
    for a, b in zip(m_unrolled, m_scan):
        for k in a:
            assert a[k].shape == b[k].shape == (2,), k
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, err_msg=k)
    assert not np.allclose(m_scan[0]['loss'], m_scan[1]['loss'])  # the steps differ: a real comparison
    for a, b in zip(jax.tree.leaves(s_unrolled), jax.tree.leaves(s_scan), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


# A toy problem with closed-form gradients: per level k, loss_k = sum(c_k * mean(images) * w + w^2 / 2), so
# grad_k = c_k * mean(images) + w. Level 0's gradient is large (clipped), level 1's small (not clipped).
SCALE = {'level_0': 40.0, 'level_1': 0.05}
W0 = {'level_0': np.array([0.5, -1.0, 2.0], np.float32), 'level_1': np.array([0.1, -0.2], np.float32)}


def _toy_loss(params, images, key, train):
    del key, train
    m = jnp.mean(images)
    per = {int(k[-1]): jnp.sum(SCALE[k] * m * w + 0.5 * w ** 2) for k, w in ((k, params[k]['w']) for k in params)}
    return sum(per.values()), per


def _by_hand(optim: Optim, batches, ema_rate, steps):
    """Numpy: clip each set's gradient to grad_clip, L2 (Adam) or decoupled (AdamW) decay, Adam, warm-up, EMA
    (with the reference's early decay)."""
    b1, b2 = optim.beta1, 0.999
    w = {k: v.astype(np.float64) for k, v in W0.items()}
    ema = dict(w)
    mom = {k: np.zeros_like(v) for k, v in w.items()}
    sec = {k: np.zeros_like(v) for k, v in w.items()}
    lrs, norms = [], []
    for i in range(steps):
        lr = optim.lr * min(i / optim.warmup, 1.0)  # the reference's: the first update has lr 0
        grads = {k: SCALE[k] * float(np.mean(batches[i], dtype=np.float64)) + w[k] for k in w}
        norms.append(np.sqrt(sum(np.sum(g ** 2) for g in grads.values())))
        for k, g in grads.items():
            g = g * min(1.0, optim.grad_clip / np.linalg.norm(g))
            if optim.optimizer == 'Adam':
                g = g + optim.weight_decay * w[k]
            mom[k] = b1 * mom[k] + (1 - b1) * g
            sec[k] = b2 * sec[k] + (1 - b2) * g ** 2
            update = (mom[k] / (1 - b1 ** (i + 1))) / (np.sqrt(sec[k] / (1 - b2 ** (i + 1))) + optim.eps)
            if optim.optimizer == 'AdamW':
                update = update + optim.weight_decay * w[k]
            w[k] = w[k] - lr * update
            decay = min(ema_rate, (2 + i) / (11 + i))  # update n = i + 1: min(rate, (1 + n) / (10 + n))
            ema[k] = decay * ema[k] + (1 - decay) * w[k]
        lrs.append(lr)
    return w, ema, np.array(lrs), np.array(norms)


@pytest.mark.parametrize('optimizer', ['Adam', 'AdamW'])
@pytest.mark.parametrize('unrolled', [True, False])
def test_optimiser_steps_equal_numpy_by_hand(optimizer, unrolled):
    optim = Optim(optimizer=optimizer, lr=0.1, beta1=0.8, eps=0.5, weight_decay=0.3, warmup=4, grad_clip=1.0)
    rate = 0.9
    tx = train_state.make_optimizer(optim, tuple(W0))
    rng = np.random.default_rng(0)
    images = rng.random((3, 2, 2, 4, 4, 1)).astype(np.float32)  # 3 calls x 2 steps x batch 2

    def init(key):
        del key
        params = {k: {'w': jnp.asarray(v)} for k, v in W0.items()}
        return train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                                      opt_state=tx.init(params))

    settings = tiny_settings()
    settings = dataclasses.replace(settings, optim=optim,
                                   training=dataclasses.replace(settings.training, ema_rate=rate))
    state, metrics = _run(_toy_loss, tx, init, settings, images, unrolled)
    w, ema, lrs, norms = _by_hand(optim, images.reshape((6,) + images.shape[2:]), rate, 6)
    assert int(state.step) == 6
    # float32 tolerance: Adam's bias correction 1 - 0.999^t alone carries a relative error of ~1e-7 / (1 - 0.999^t).
    for k in W0:
        np.testing.assert_allclose(state.params[k]['w'], w[k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state.ema_params[k]['w'], ema[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([m['lr'] for m in metrics]), lrs, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([m['grad_norm'] for m in metrics]), norms, rtol=1e-5)
    # The hand computation is sensitive to each ingredient: it moved away from the start, and without the
    # clip, the decay or the warm-up it would land elsewhere.
    assert np.abs(w['level_0'] - W0['level_0']).max() > 0.05
    for change in ({'grad_clip': 1e6}, {'weight_decay': 0.0}, {'warmup': 1}):
        other, _, _, _ = _by_hand(dataclasses.replace(optim, **change), images.reshape((6,) + images.shape[2:]),
                                  rate, 6)
        assert np.abs(other['level_0'] - w['level_0']).max() > 1e-3, change
