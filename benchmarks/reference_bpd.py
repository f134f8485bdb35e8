"""Bits/dim of an imported reference network by two routes: the exact trace, and the Hutchinson mean eval uses.

    python benchmarks/reference_bpd.py

The reference fixture tests/data/reference/vp_8.pth (DDPM++ VP, 8x8, written by score_sde_pytorch) is
imported and the probability-flow likelihood of its first input image is integrated from eps = 1e-5
(rtol = atol = 1e-4). The Hutchinson mean agrees with the exact trace; the eps = 1e-3 value shows how far
the sampling eps would move it. (tests/test_conventions.py checks eval's route against the reference's own
likelihood code instead: benchmarks/reference_bpd_fixture.py.)
Results: benchmarks/results/reference_bpd.json.
"""
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from results import save_result  # noqa: E402
from subspace_diffusion.core import likelihood  # noqa: E402
from subspace_diffusion.run import published  # noqa: E402
from subspace_diffusion.run.experiment import Experiment  # noqa: E402
from subspace_diffusion.run.settings import Settings  # noqa: E402

REF = os.path.join(ROOT, 'tests', 'data', 'reference')
PROBES = 64


def main():
    config = importlib.import_module('configs.cifar10_vp_ddpmpp').get_config()
    config.model.nf, config.model.num_res_blocks, config.data.image_size = 8, 1, 8
    config.subspace.levels, config.subspace.cutoffs = 0, ()  # the full-space network alone
    exp = Experiment.build(Settings.from_config(config), levels=(0,))
    params = {'level_0': published.network_params(exp.networks, os.path.join(REF, 'vp_8.pth'), 0)}
    x = jnp.asarray(np.load(os.path.join(REF, 'vp_8_io.npz'))['x'][:1])
    score = exp.networks.scores(params)

    def bpd(key, x, trace, eps=likelihood.LIKELIHOOD_EPS):
        logp, _, nfe = likelihood.log_likelihood(key, x, exp.diffusion(None), score, trace=trace, eps=eps,
                                                 tolerance=likelihood.Tolerance(1e-4, 1e-4))
        return likelihood.bits_per_dim(logp, 192, centered=True), nfe

    key = jax.random.PRNGKey(0)
    exact, nfe = jax.jit(lambda x: bpd(key, x, 'exact'))(x)
    many = jnp.repeat(x, PROBES, 0)  # one Rademacher probe per row
    hutchinson, _ = jax.jit(lambda x: bpd(key, x, 'rademacher'))(many)
    at_sampling_eps, _ = jax.jit(lambda x: bpd(key, x, 'rademacher', eps=1e-3))(many)
    hutchinson = np.asarray(hutchinson, np.float64)
    result = {
        'command': 'python benchmarks/reference_bpd.py', 'fixture': 'tests/data/reference/vp_8.pth, image 0',
        'likelihood_eps': likelihood.LIKELIHOOD_EPS, 'ode_tolerance': 1e-4, 'ode_nfe': int(nfe),
        'exact_trace_bpd': float(exact[0]), 'hutchinson_bpd_mean': float(hutchinson.mean()),
        'hutchinson_probes': PROBES, 'hutchinson_bpd_stderr': float(hutchinson.std(ddof=1) / np.sqrt(PROBES)),
        'hutchinson_bpd_from_eps_1e-3': float(np.mean(np.asarray(at_sampling_eps, np.float64))),
    }
    save_result('reference_bpd', result)


if __name__ == '__main__':
    main()
