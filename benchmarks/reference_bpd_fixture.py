"""Bits/dim by the reference's own likelihood code, for tests/data/reference_bpd.npz (tests/test_conventions.py).

Needs torch, scipy and ml_collections (not project dependencies; e.g. `python3 -m venv /tmp/tv &&
/tmp/tv/bin/pip install torch scipy ml-collections`) and a checkout of bjing2016/subspace-diffusion:
    /tmp/tv/bin/python benchmarks/reference_bpd_fixture.py --reference /path/to/subspace-diffusion

For each imported reference fixture (tests/data/reference/<name>.pth, its EMA weights) it draws fixed 8-bit
images, uniform dequantisation noise and a Rademacher probe with numpy (seeded), then runs the reference's
`likelihood.get_likelihood_fn` (scipy RK45 from eps = 1e-5 to T, rtol = atol = 1e-5, its bits/dim offset
`7 - inverse_scaler(-1)`) on `scaler((255 x + u) / 256)`, the input its evaluation feeds it (score-SDE's
datasets.py dequantisation and data scaler, restated here because that module needs TensorFlow). The probe
replaces the one the reference would draw. Only the numbers are written: images, noise, probe, the input the
reference integrated (NHWC), bits/dim and its solver's NFE.
"""
import argparse
import importlib
import json
import os
import sys
from unittest import mock

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, 'tests', 'data', 'reference')
# fixture -> (reference config module, image size, number of images). ve_32 (NCSN++ VE on [0, 1] data, offset +8)
# works the same way (measured: ours within 4e-6 of 14.97287); the suite leaves it out for its cost (compiling the
# 32 px network's likelihood takes minutes on CPU).
CASES = {'vp_8': ('configs.vp.cifar10_ddpmpp_continuous', 8, 4)}
TOLERANCE, EPS = 1e-5, 1e-5


def _reference_model(name, config):
    from models import ema as ema_lib
    from models import utils as mutils
    model = mutils.create_model(config)
    checkpoint = torch.load(os.path.join(REF, f'{name}.pth'), map_location='cpu', weights_only=False)  # our fixture
    model.load_state_dict(checkpoint['model'], strict=True)
    ema = ema_lib.ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    ema.load_state_dict(checkpoint['ema'])
    ema.copy_to(model.parameters())
    return model.eval()


def _case(name, rng):
    import likelihood
    import sde_lib
    module, size, n = CASES[name]
    config = importlib.import_module(module).get_config()
    config.data.image_size, config.model.nf, config.model.num_res_blocks = size, 8, 1  # the fixture's size
    config.device = torch.device('cpu')
    model = _reference_model(name, config)
    m = config.model
    sde = (sde_lib.VESDE(m.sigma_min, m.sigma_max, m.num_scales) if config.training.sde == 'vesde'
           else sde_lib.VPSDE(m.beta_min, m.beta_max, m.num_scales))
    centered = config.data.centered
    pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    u = rng.random((n, size, size, 3), dtype=np.float32)
    probe = rng.integers(0, 2, (n, size, size, 3)).astype(np.float32) * 2 - 1
    x = (u + pixels.astype(np.float32)) / 256  # (255 x01 + u) / 256 for x01 = pixels / 255
    x = torch.from_numpy(2 * x - 1 if centered else x).permute(0, 3, 1, 2)
    inverse_scaler = (lambda v: (v + 1) / 2) if centered else (lambda v: v)
    fn = likelihood.get_likelihood_fn(sde, inverse_scaler, rtol=TOLERANCE, atol=TOLERANCE, eps=EPS)
    # The reference draws its Rademacher probe as randint_like(data, 0, 2) * 2 - 1: hand it ours.
    zero_one = torch.from_numpy((probe + 1) / 2).permute(0, 3, 1, 2)
    with mock.patch.object(torch, 'randint_like', lambda *a, **k: zero_one.clone()):
        bpd, _, nfe = fn(model, x)
    return {f'{name}_pixels': pixels, f'{name}_u': u, f'{name}_probe': probe,
            f'{name}_x': x.permute(0, 2, 3, 1).numpy(), f'{name}_bpd': bpd.numpy().astype(np.float64),
            f'{name}_nfe': np.int64(nfe)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--reference', required=True, help='a checkout of bjing2016/subspace-diffusion')
    parser.add_argument('--out', default=os.path.join(ROOT, 'tests', 'data', 'reference_bpd.npz'))
    args = parser.parse_args()
    sys.path.insert(0, args.reference)
    # Its `op` package compiles CUDA kernels at import; on the CPU it runs the native up/down-sampling instead.
    with mock.patch('torch.utils.cpp_extension.load', lambda *a, **k: None):
        importlib.import_module('models.ncsnpp')  # registers 'ncsnpp' for create_model
    torch.set_num_threads(1)
    arrays = {}
    for i, name in enumerate(CASES):
        arrays.update(_case(name, np.random.default_rng(i)))
        print(name, arrays[f'{name}_bpd'], 'NFE', int(arrays[f'{name}_nfe']))
    about = {'reference': 'bjing2016/subspace-diffusion likelihood.get_likelihood_fn', 'torch': torch.__version__,
             'rtol': TOLERANCE, 'atol': TOLERANCE, 'eps': EPS, 'weights': 'ema', 'cases': list(CASES),
             'command': 'python benchmarks/reference_bpd_fixture.py --reference <checkout>'}
    np.savez(args.out, about=np.array(json.dumps(about)), **arrays)
    print('wrote', args.out)


if __name__ == '__main__':
    main()
