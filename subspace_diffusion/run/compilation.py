"""The persistent XLA compilation cache: compiled programs kept on disk and reused by later runs and processes.

A restarted training (after a pre-emption), an evaluation, a snapshot sampler, a Python API session
(sd.load turns it on as main.py does) or a test process that compiles a program some earlier run compiled loads
it from the cache instead; every hit is logged with the compilation time it saved. On a pod slice point --compile_cache at a directory every host sees (a shared
file system, or a gs:// bucket).
"""
import os

import jax
from absl import logging

from subspace_diffusion.formats.files import writable

MIN_COMPILE_SECONDS = 0.5  # programs that compile faster are not worth a disk round trip
_listening = False


def default_dir() -> str:
    """$XDG_CACHE_HOME/subspace_diffusion/jax (~/.cache/... by default): per user, outside every workdir."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'subspace_diffusion', 'jax')


def _log_hit(event: str, seconds: float, **kwargs):
    del kwargs
    if event == '/jax/compilation_cache/compile_time_saved_sec':
        logging.info('compilation cache hit: %.1f s of compilation saved', seconds)


def _check_dir(path: str, name: str):
    """Create the cache directory and prove it writable, or raise one ValueError naming the problem and the fix.

    JAX would warn at every compilation that it cannot write an entry, and carry on uncached.
    """
    fix = f'point {name} at a writable directory, or give {name}= (empty) to run without the cache'
    if path == default_dir():
        fix += ' (the default lies under $XDG_CACHE_HOME or ~/.cache)'
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f'{name}={path} is a file, not a directory: {fix}')
    reason = writable(path)
    if reason:
        raise ValueError(f'{name}={path} cannot be written ({reason}): {fix}')


def enable(path: str, name: str = '--compile_cache'):
    """Use `path` as the persistent compilation cache ('' leaves it off) and log every hit; ValueError (one line
    naming the setting `name`) when a local path cannot serve as one."""
    if not path:
        return
    if '://' not in path:  # gs://... and other remote caches are JAX's (etils) to create
        _check_dir(path, name)
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
    global _listening
    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_log_hit)
        _listening = True
