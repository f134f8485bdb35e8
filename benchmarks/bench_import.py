"""Import time and peak memory of a full-size published checkpoint (main.py --mode=import, no torch).

    python benchmarks/bench_import.py --pth /tmp/checkpoint_26.pth   # written by make_release_checkpoint.py

Runs the import as a child process (wall time, peak resident memory of that process), then loads the
written workdir and checks the EMA values recorded beside the .pth and the Adam state it carried over.
Results: benchmarks/results/import.json.
"""
import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from results import save_result  # noqa: E402
CONFIGS = {'ve/cifar10_ncsnpp_continuous': 'cifar10_ve_ncsnpp', 'vp/cifar10_ddpmpp_continuous': 'cifar10_vp_ddpmpp'}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--pth', required=True)
    args = parser.parse_args()
    with open(args.pth + '.json') as f:
        made = json.load(f)
    config_file = os.path.join(ROOT, 'configs', CONFIGS[made['config']] + '.py')
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, os.path.join(ROOT, 'main.py'), '--mode=import', f'--config={config_file}',
               f'--workdir={workdir}', f'--import_from={args.pth}', '--import_level=0']
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
        wall = time.perf_counter() - t0
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB

        import jax
        from flax import traverse_util

        from subspace_diffusion.models import convert
        from subspace_diffusion.run import loading
        from subspace_diffusion.run.settings import Settings
        config = importlib.import_module(f'configs.{CONFIGS[made["config"]]}').get_config()
        settings = Settings.from_config(config)
        networks, parts, step = loading.load_parts(settings, workdir)
        flat = traverse_util.flatten_dict(parts['ema_params'][0])
        by_key = {convert.torch_key(path): (path, value) for path, value in flat.items()}
        worst = 0.0
        for key, values in made['ema_probe'].items():
            path, value = by_key[key]
            got = convert.to_torch(path, np.asarray(value)).flatten()[:4]
            worst = max(worst, float(np.abs(got - np.asarray(values)).max()))
        n_params = sum(int(np.prod(v.shape)) for v in flat.values())
        # The Adam state comes along: make_release_checkpoint.py writes exp_avg_sq 1e-6 after `step` updates.
        count, _, nu = loading.load_adam_moments(settings, workdir, step, networks)[0]
        nu_error = max(float(np.abs(np.asarray(v) - 1e-6).max()) for v in jax.tree.leaves(nu)
                       if np.asarray(v).any())
    result = {
        'command': 'python benchmarks/bench_import.py --pth <checkpoint written by make_release_checkpoint.py>',
        'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
        'config': made['config'], 'image_size': made['image_size'], 'file_mib': made['bytes'] / 2 ** 20,
        'n_params': n_params, 'n_params_manifest': made['n_params'], 'step': int(step),
        'import_wall_s': wall, 'import_peak_rss_mib': peak_mib, 'ema_probe_max_abs_error': worst,
        'adam_count': int(count), 'adam_nu_max_abs_error': nu_error,
    }
    save_result('import', result)


if __name__ == '__main__':
    main()
