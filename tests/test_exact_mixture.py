"""Every sampler, driven by the exact score of a small image mixture, ends on a training image, never as noise.

The data are 32 sklearn digits at 16 x 16 (upsampled 2x, [0, 1]); p_t is then a mixture of N(alpha x_i, sigma^2 I)
whose score is exact at every t and level (the level-k data are the pooled images D^k x_i). So whatever a sampler
gets wrong here is the sampler's, not a network's: this is how the full-space probability-flow failure of the
trained Fashion-MNIST network was shown to lie in the network (benchmarks/flow_failure.py, docs/results.md).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from subspace_diffusion.core.diffusion import Diffusion
from subspace_diffusion.core.ode import ODEConfig
from subspace_diffusion.core.pc import PCConfig
from subspace_diffusion.core.sampling import SamplerConfig, sample
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import PoolingChain, Subspace, compute_stats

SDE_VE = SDE('ve', sigma_min=0.01, sigma_max=25.0)  # the fashion config's range
CUTOFFS = (0.629, 0.673)
N_SAMPLES = 24


def _images():
    digits = load_digits().images[:32] / 16.0  # (32, 8, 8) in [0, 1]
    return np.repeat(np.repeat(digits, 2, axis=1), 2, axis=2)[..., None].astype(np.float32)  # (32, 16, 16, 1)


IMAGES = _images()
CHAIN = PoolingChain(IMAGES.shape[1:], 2)


def mixture_score(sde, means):
    """Exact score of (1/N) sum_i N(alpha(t) m_i, sigma(t)^2 I) for means (N, *shape): x (B, *shape), t (B,)."""
    m = jnp.asarray(means.reshape(len(means), -1))

    def score(x, t):
        flat = x.reshape(x.shape[0], -1)
        a, s2 = sde.alpha(t)[:, None], sde.sigma(t)[:, None] ** 2
        d2 = jnp.sum(flat ** 2, 1)[:, None] - 2 * a * flat @ m.T + a ** 2 * jnp.sum(m ** 2, 1)[None]
        w = jax.nn.softmax(-d2 / (2 * s2), axis=1)
        return ((a * (w @ m) - flat) / s2).reshape(x.shape)

    return score


def _setup(space):
    if space == 'full':
        return Diffusion(SDE_VE, IMAGES.shape[1:]), [mixture_score(SDE_VE, IMAGES)]
    stats = compute_stats(CHAIN, [IMAGES])
    levels = [np.asarray(CHAIN.down(jnp.asarray(IMAGES), k)) if k else IMAGES for k in range(3)]
    return (Diffusion(SDE_VE, IMAGES.shape[1:], Subspace(CHAIN, stats, CUTOFFS)),
            [mixture_score(SDE_VE, lv) for lv in levels])


SAMPLERS = {
    'pc 100': SamplerConfig(method='pc', pc=PCConfig(num_steps=100, snr=0.16)),
    'heun 20': SamplerConfig(method='ode_heun', ode=ODEConfig(nfe_budget=20.0)),
    'dpm_solver++ 20': SamplerConfig(method='dpm_solver++', ode=ODEConfig(nfe_budget=20.0)),
    'adaptive ode': SamplerConfig(method='ode'),
}


@pytest.mark.parametrize('space', ['full', 'chain'])
@pytest.mark.parametrize('name', list(SAMPLERS))
def test_exact_mixture_score_lands_every_sample_on_a_training_image(space, name):
    diffusion, scores = _setup(space)
    cfg = SAMPLERS[name]
    x, _ = jax.jit(lambda key: sample(key, N_SAMPLES, diffusion, scores, cfg))(jax.random.PRNGKey(0))
    x = np.asarray(x).reshape(N_SAMPLES, -1)
    train = IMAGES.reshape(len(IMAGES), -1)
    rms = np.sqrt(((x[:, None] - train[None]) ** 2).mean(-1))  # (samples, images), [0, 1] pixel units
    nearest = rms.min(1)
    # Training images lie 0.2-0.5 RMS apart; an end within 0.03 of one is that image (a noise image is ~0.3+ away).
    assert nearest.max() < 0.03, (space, name, np.sort(nearest)[-5:])
    # Not all on one image: the samplers spread over the mixture.
    assert len(set(rms.argmin(1))) >= 8, (space, name, sorted(set(rms.argmin(1))))
