"""Shared pytest setup: the repository root on sys.path, and the persistent compilation cache.

Tests use the cache every run of main.py uses (--compile_cache, default per user), in-process too, so
the many small programs that several tests compile (and main.py subprocesses compile again) are compiled
once per machine; every hit is logged with the compilation time it saved.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from subspace_diffusion.run import compilation  # noqa: E402

compilation.enable(compilation.default_dir())
