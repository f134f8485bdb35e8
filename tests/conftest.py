"""Shared pytest setup: the repository root on sys.path, and the persistent compilation cache.

Tests use the cache every run of main.py uses (--compile_cache, default per user), in-process too, so
the many small programs that several tests compile (and main.py subprocesses compile again) are compiled
once per machine; every hit is logged with the compilation time it saved.

The suite compiles at XLA's backend optimisation level 0: its tiny programs spend most of their time in the
compiler, and level 0 takes ~40% less CPU for them (docs/tests.md). Both sides of every comparison in the suite
are compiled alike; what users run is compiled at XLA's default level, and the cache keys differ by the flag.
The environment carries it into the main.py subprocesses the tests start.

The tiny chain trained once per session (per pytest-xdist worker) for the tests that need a trained workdir.
"""
import os
import sys

import pytest

if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tiny import train_tiny_chain, workdir_files  # noqa: E402

from subspace_diffusion.run import compilation  # noqa: E402

compilation.enable(compilation.default_dir())


@pytest.fixture(scope='session')
def trained_chain(tmp_path_factory):
    """A tiny workdir trained on both levels (checkpoint at step 2, chain statistics), shared by every test that asks:
    read it, never change it; a test that changes a workdir changes a copy (shutil.copytree)."""
    path = train_tiny_chain(tmp_path_factory.mktemp('trained_chain'))
    files = workdir_files(path)
    yield path
    # A change would make the tests that share it depend on their order.
    assert workdir_files(path) == files, f'a test changed the shared workdir {path}: change a copy of it instead'
