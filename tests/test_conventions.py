"""The reference's evaluation conventions: likelihood eps, bits/dim of an imported reference network."""
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_settings

from subspace_diffusion.core import likelihood
from subspace_diffusion.evaluation import bpd
from subspace_diffusion.run import parallel, published
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Settings

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'reference')


@pytest.mark.parametrize('kind', ['ve', 'vp', 'subvp'])
def test_eval_bits_per_dim_integrates_from_1e_5_unless_configured(kind, monkeypatch):
    seen = []

    def fake_log_likelihood(key, x, *args, eps, **kwargs):
        seen.append(eps)
        n = jnp.zeros((), jnp.int32)
        return jnp.zeros(x.shape[0]), x, likelihood.SolveStats(n, n, jnp.asarray(1.0), jnp.asarray(True))

    monkeypatch.setattr(likelihood, 'log_likelihood', fake_log_likelihood)
    for override, expected in (({}, 1e-5), ({'eval__likelihood_eps': 1e-3}, 1e-3)):
        settings = tiny_settings(sde__kind=kind, eval__bpd_num_examples=4, eval__bpd_num_repeats=1,
                                 eval__batch_size=4, subspace__levels=0, subspace__cutoffs=(), **override)
        exp = Experiment.build(settings, levels=(0,))
        params = exp.networks.init_params(jax.random.PRNGKey(0))
        bpd.split_bpd(settings, exp.diffusion(None), exp.networks.scores, params, parallel.make_mesh())
        assert seen[-1] == expected
    assert settings.sde.sampling_eps != 1e-5 or kind == 've'  # VP / sub-VP sampling eps differs from the likelihood's


# tests/data/reference_bpd.npz, written by `benchmarks/reference_bpd_fixture.py` with the reference's own
# likelihood code (bjing2016/subspace-diffusion likelihood.py, scipy RK45, rtol = atol = 1e-5 from eps = 1e-5) on
# the imported fixtures' EMA weights: 8-bit images, their dequantisation noise, the Hutchinson probe, bits/dim.
FIXTURE = os.path.join(os.path.dirname(REF), 'reference_bpd.npz')
# fixture -> our config of it (tests/test_reference_import.py): DDPM++ VP on centred data (offset +7).
BPD_CASES = {'vp_8': 'cifar10_vp_ddpmpp'}


@pytest.mark.parametrize('name', sorted(BPD_CASES))
def test_bits_per_dim_pipeline_equals_the_reference_likelihood_code(name, monkeypatch):
    with np.load(FIXTURE) as f:
        about = json.loads(str(f['about']))
        pixels, u, probe, x_reference, expected = (f[f'{name}_{k}'] for k in ('pixels', 'u', 'probe', 'x', 'bpd'))
    config = importlib.import_module(f'configs.{BPD_CASES[name]}').get_config()
    config.model.nf, config.model.num_res_blocks, config.data.image_size = 8, 1, pixels.shape[1]
    config.subspace.levels, config.subspace.cutoffs = 0, ()  # the full-space network alone
    settings = Settings.from_config(config)
    ev = settings.eval
    assert (ev.likelihood_eps, ev.tolerance.rtol, ev.tolerance.atol) == (about['eps'], about['rtol'], about['atol'])
    exp = Experiment.build(settings, levels=(0,))
    params = {'level_0': published.network_params(exp.networks, os.path.join(REF, f'{name}.pth'), 0)}
    # eval's own route (evaluation/bpd.py: dequantise, scale, integrate, offset) with the fixture's draws standing
    # in for its dequantisation noise and probe; the model-space input it integrates is recorded on the way.
    for fn, value in {'uniform': u, 'rademacher': probe}.items():
        monkeypatch.setattr(jax.random, fn, lambda key, shape, dtype=jnp.float32, v=value, **kw: jnp.asarray(v, dtype))
    integrated, log_likelihood = [], likelihood.log_likelihood

    def recording(key, x, *args, **kwargs):
        jax.debug.callback(lambda v: integrated.append(np.asarray(v)), x)
        return log_likelihood(key, x, *args, **kwargs)

    monkeypatch.setattr(likelihood, 'log_likelihood', recording)
    batch_bpd = bpd.bpd_function(settings, exp.diffusion(None), exp.networks.scores)
    ours = np.asarray(batch_bpd(params, jax.random.PRNGKey(0), jnp.asarray(pixels / 255., jnp.float32))[0])
    # The same input as the reference's (its dequantisation and scaler) ...
    np.testing.assert_allclose(integrated[0], x_reference, rtol=0, atol=1e-6)
    # ... and the same bits/dim, the +7 offset included: two adaptive solvers at rtol = atol = 1e-5, scipy's in
    # float64 and ours in float32, measured 1e-6 apart (one float32 step at 15.6). Integrating from the sampling
    # eps 1e-3 instead moves it by 7.7e-5 (benchmarks/reference_bpd.py). These random networks' bits/dim barely depend on the image (4e-5
    # across images), so the input is compared on its own above.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=4e-6)
