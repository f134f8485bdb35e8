"""Files written whole or not at all, and files read through one guard.

Writes go to a temporary file renamed into place, so a killed run never leaves half a file. Reads of
every file the project takes in (caches, statistics, masks, weights, records) go through `guarded`: a
missing path, a directory, an empty, truncated or wrong-format file is one `FileProblem` line naming the
file, what is wrong and the fix, never a traceback from deep inside numpy, zipfile or PIL. Arrays are
read with `allow_pickle=False`: a file from outside never runs code.
"""
import contextlib
import errno
import importlib.util
import json
import os
import zipfile
import zlib
from typing import Optional

import numpy as np


class FileProblem(ValueError):
    """A file that cannot be used: one line with the file, what is wrong and the fix."""


def check_file(path, what: str, fix: str):
    """Raise FileProblem unless `path` is an existing, non-empty regular file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileProblem(f'{what} {path} does not exist: {fix}')
    if os.path.isdir(path):
        raise FileProblem(f'{what} {path} is a directory, not a file: {fix}')
    if os.path.getsize(path) == 0:
        raise FileProblem(f'{what} {path} is empty: {fix}')


@contextlib.contextmanager
def guarded(path, what: str, fix: str):
    """Context for reading `path`: checks it is a usable file; any failure inside becomes one FileProblem line."""
    check_file(path, what, fix)
    try:
        yield os.fspath(path)
    except FileProblem:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, zlib.error,
            UnicodeError, json.JSONDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if 'allow_pickle' in reason or 'pickled' in reason:
            reason = 'it holds pickled Python objects, which are never loaded'
        kind = 'corrupt compressed data' if isinstance(e, zlib.error) else type(e).__name__  # zlib's is 'error'
        raise FileProblem(f'{what} {path} cannot be read ({kind}: {reason[:200]}): {fix}') from None


def read_npz(path, what: str, fix: str, required=()) -> dict:
    """{name: array} of an .npz file (no pickles), with the `required` names present; FileProblem otherwise."""
    with guarded(path, what, fix):
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise FileProblem(f'{what} {path} is a single .npy array, not an .npz archive: {fix}')
            missing = [k for k in required if k not in f.files]
            if missing:
                raise FileProblem(f'{what} {path} lacks {", ".join(missing)} (written by another version?): {fix}')
            return {k: f[k] for k in f.files}


def read_json(path, what: str, fix: str) -> dict:
    """The JSON object of a file; FileProblem when it is missing, damaged or not an object."""
    with guarded(path, what, fix):
        with open(path) as f:
            value = json.load(f)
    if not isinstance(value, dict):
        raise FileProblem(f'{what} {path} holds a JSON {type(value).__name__}, not an object: {fix}')
    return value


def config_module(path):
    """The module of a config file (.py), run once as a fresh module (not in sys.modules: nothing is left from another
    file); raises whatever the file raises. A config file is the user's own code, unlike the files read above."""
    spec = importlib.util.spec_from_file_location('config', os.fspath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def writable(folder) -> Optional[str]:
    """Create `folder` if needed and write a file into it: None when that works, else why not, in a few words."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f'.write_test_{os.getpid()}')  # one per process of a multi-host run
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        return {errno.ENOTDIR: 'a part of the path is a file', errno.EROFS: 'read-only file system',
                errno.EACCES: 'permission denied', errno.ENOSPC: 'no space left'}.get(e.errno, e.strerror)
    return None


def atomic_json(path, obj):
    """Write `obj` as indented JSON to `path`."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def atomic_npz(path, **arrays):
    """np.savez of `arrays` to `path`."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
