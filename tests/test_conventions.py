"""The reference's evaluation conventions: likelihood eps, bits/dim of an imported reference network."""
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_settings

from subspace_diffusion.core import likelihood
from subspace_diffusion.core.likelihood import Tolerance
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
        return jnp.zeros(x.shape[0]), x, 0

    monkeypatch.setattr(likelihood, 'log_likelihood', fake_log_likelihood)
    for override, expected in (({}, 1e-5), ({'eval__likelihood_eps': 1e-3}, 1e-3)):
        settings = tiny_settings(sde__kind=kind, eval__bpd_num_examples=4, eval__bpd_num_repeats=1,
                                 eval__batch_size=4, subspace__levels=0, subspace__cutoffs=(), **override)
        exp = Experiment.build(settings, levels=(0,))
        params = exp.networks.init_params(jax.random.PRNGKey(0))
        bpd.split_bpd(settings, exp.diffusion(None), exp.networks.scores, params, parallel.make_mesh())
        assert seen[-1] == expected
    assert settings.sde.sampling_eps != 1e-5 or kind == 've'  # VP / sub-VP sampling eps differs from the likelihood's


# Bits/dim of image 0 of vp_8_io.npz under the imported vp_8.pth by the exact trace (eps 1e-5, tolerance 1e-4),
# computed by `python benchmarks/reference_bpd.py` (benchmarks/results/reference_bpd.json). From eps = 1e-3 the
# same likelihood is 7.7e-5 bits/dim lower, so the tolerance below tells the two conventions apart.
EXACT_TRACE_BPD = 15.575998306


def test_bits_per_dim_of_an_imported_reference_network_matches_the_exact_trace():
    config = importlib.import_module('configs.cifar10_vp_ddpmpp').get_config()
    config.model.nf, config.model.num_res_blocks, config.data.image_size = 8, 1, 8
    config.subspace.levels, config.subspace.cutoffs = 0, ()  # the full-space network alone
    exp = Experiment.build(Settings.from_config(config), levels=(0,))
    params = {'level_0': published.network_params(exp.networks, os.path.join(REF, 'vp_8.pth'), 0)}
    x = jnp.asarray(np.load(os.path.join(REF, 'vp_8_io.npz'))['x'][:1])  # one 8x8x3 image in [-1, 1]
    probes = 64  # the image repeated, one Rademacher probe per row (the ODE path is the same for all)

    @jax.jit
    def bpd(key, x):
        logp, _, _ = likelihood.log_likelihood(key, x, exp.diffusion(None), exp.networks.scores(params),
                                               tolerance=Tolerance(1e-4, 1e-4))
        return likelihood.bits_per_dim(logp, 192, centered=True)

    hutchinson = np.asarray(bpd(jax.random.PRNGKey(0), jnp.repeat(x, probes, 0)), np.float64)
    stderr = hutchinson.std(ddof=1) / np.sqrt(probes)
    assert 0 < stderr < 1e-4
    assert abs(hutchinson.mean() - EXACT_TRACE_BPD) < max(4 * stderr, 1e-5)
