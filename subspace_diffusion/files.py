"""Files written whole or not at all: a temporary file renamed into place, so a killed run never leaves half a file."""
import json
import os

import numpy as np


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
