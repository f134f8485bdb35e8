"""The quick digits config shrunk for tests: 8 px, one U-Net resolution (compiles fast), batch 16, frequent checkpoints;
and main.py run on it as a user runs it (a subprocess); and the files of a workdir, hashed, to show what a run kept."""
import glob
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from configs import quick_digits
from subspace_diffusion.run.settings import Settings

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

TINY = {
    'data.image_size': 8, 'model.nf': 8, 'model.ch_mult': (1,), 'model.num_res_blocks': 1, 'model.attn_resolutions': (),
    'training.batch_size': 16, 'training.n_iters': 8, 'training.n_jitted_steps': 2, 'training.log_freq': 2,
    'training.snapshot_freq': 4, 'training.snapshot_freq_for_preemption': 2, 'training.snapshot_sampling': False,
    'sampling.num_steps': 10, 'subspace.train_level': 0,
}


def tiny_config(**overrides):
    """quick_digits with TINY applied, then `overrides` (keys with '__' for '.', e.g. training__n_iters=4)."""
    config = quick_digits.get_config()
    for key, value in {**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}}.items():
        section, name = key.rsplit('.', 1)
        node = config
        for part in section.split('.'):
            node = node[part]
        node[name] = value
    return config


def tiny_flags(**overrides):
    """The same settings as main.py flags: ['--config=configs/quick_digits.py', '--config.a.b=v', ...]."""
    merged = {**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}}
    flags = ['--config=configs/quick_digits.py']
    for key, value in merged.items():
        flags.append(f'--config.{key}={value}')
    return flags


def tiny_settings(**overrides):
    """tiny_config(**overrides) checked into typed settings, as main.py does."""
    return Settings.from_config(tiny_config(**overrides))


def train_tiny_chain(path):
    """Train both levels of the tiny 1-level chain for 2 steps into `path`, with the chain's statistics -> path."""
    from subspace_diffusion.jobs import train
    from subspace_diffusion.run import statistics
    from subspace_diffusion.run.experiment import build_chain
    settings = tiny_settings(training__n_iters=2, subspace__train_level=-1)
    train.train(settings, path)
    statistics.load(settings, build_chain(settings), str(path))
    return path


def workdir_files(workdir, skip=()) -> dict:
    """{relative path: sha1} of every file under `workdir` but hidden ones (locks, probes) and those whose relative
    path starts with one of `skip`."""
    files = {}
    for path in glob.glob(os.path.join(workdir, '**', '*'), recursive=True):  # glob skips hidden names
        rel = os.path.relpath(path, workdir)
        if os.path.isfile(path) and not rel.startswith(tuple(skip)):
            files[rel] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    return files


def files_kept(before: dict, workdir, skip=()) -> bool:
    """Every file of `before` (`workdir_files(workdir, skip)` taken earlier) is still there, byte for byte; files
    written since may be new."""
    after = workdir_files(workdir, skip)
    return all(after.get(rel) == digest for rel, digest in before.items())


def main_env() -> dict:
    """The environment of a main.py subprocess: CPU only, the repository and tests/ importable."""
    return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join([ROOT, TESTS]))


def main_cmd(*args, **overrides) -> list:
    """The command line of main.py with the tiny settings (`overrides` as for tiny_flags), then `args`."""
    return [sys.executable, os.path.join(ROOT, 'main.py'), *tiny_flags(**overrides), *args]


def run_main(*args, **overrides):
    """main.py with the tiny settings, run in the repository -> (return code, stderr)."""
    out = subprocess.run(main_cmd(*args, **overrides), env=main_env(), capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    return out.returncode, out.stderr


def one_error_line(rc, stderr, expected):
    """Non-zero exit, no traceback, and the last line is 'error: ...' containing `expected`; returns that line."""
    last = stderr.strip().splitlines()[-1]
    assert rc != 0 and 'Traceback' not in stderr and last.startswith('error: ') and expected in last, stderr[-2000:]
    return last
