"""The sampler's batch axis sharded over 8 forced CPU devices gives the same samples as one device."""
import os
import subprocess
import sys

SCRIPT = r'''
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from gaussian_case import make_case
from subspace_diffusion.core.diffusion import Diffusion
from subspace_diffusion.core.pc import PCConfig
from subspace_diffusion.core.sampling import SamplerConfig, sample
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import PoolingChain
assert jax.device_count() == 8
sde = SDE('ve'); case = make_case(PoolingChain((4, 4, 1), 2), [0.3, 0.6])
fns = [case.level_score(sde, k) for k in range(3)]
cfg = SamplerConfig('pc', eps=1e-5, pc=PCConfig(num_steps=30))
mesh = Mesh(np.array(jax.devices()), ('data',))
sharding = NamedSharding(mesh, P('data'))
run = lambda s: jax.jit(lambda key: sample(key, 64, Diffusion(sde, (4, 4, 1), case.subspace((0.1, 0.2)), s), fns,
                                           cfg)[0])(jax.random.PRNGKey(0))
x8, x1 = run(sharding), run(None)
assert len(x8.sharding.device_set) == 8, x8.sharding
np.testing.assert_allclose(np.asarray(x8), np.asarray(x1), atol=1e-5)
print('OK')
'''


def test_sampler_sharded_over_8_devices_matches_single_device():
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu',
               PYTHONPATH=os.pathsep.join([os.path.dirname(here), here]))
    out = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]
