"""Write files in torch.save's zip or legacy format without torch (test helper): state dicts of numpy arrays, or
crafted views and sizes.

The pickle names the globals torch writes (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`, ...), so
the files exercise exactly what formats/pth.py must read; stand-in modules are registered only while pickling.
"""
import collections
import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

_STORAGES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.float64): 'DoubleStorage',
             np.dtype(np.int64): 'LongStorage', np.dtype(np.uint8): 'ByteStorage'}


def _rebuild_tensor_v2(*args):
    raise AssertionError('a stand-in: never called while writing')


@contextlib.contextmanager
def _stand_in_torch():
    torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')
    _rebuild_tensor_v2.__module__ = 'torch._utils'
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storages = {}
    for name in _STORAGES.values():
        cls = type(name, (), {'__module__': 'torch'})
        setattr(torch, name, cls)
        storages[name] = cls
    torch._utils = utils
    saved = {k: sys.modules.get(k) for k in ('torch', 'torch._utils')}
    sys.modules.update({'torch': torch, 'torch._utils': utils})
    try:
        yield storages
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Storage:
    def __init__(self, key, flat):
        self.key, self.flat = key, flat


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return _rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


def tensor_view(flat: np.ndarray, key: str, size, stride, offset: int = 0) -> _Tensor:
    """A tensor over storage `flat` (1-D) with any size and stride, e.g. a stride-0 view of a huge shape."""
    return _Tensor(_Storage(key, np.ascontiguousarray(flat)), offset, tuple(size), tuple(stride))


def tensor(array: np.ndarray, key: str) -> _Tensor:
    """A contiguous tensor holding `array`."""
    a = np.ascontiguousarray(array)
    strides = tuple(s // a.itemsize for s in a.strides) if a.ndim else ()
    return tensor_view(a.reshape(-1), key, a.shape, strides)


def _pickled(obj, legacy, counts=None):
    """(torch's pickle of `obj`, {storage key: flat array}); the legacy format's storage ids add view metadata.

    counts: {key: element count} to claim for a storage instead of its true size.
    """
    with _stand_in_torch() as storage_types:
        storages = {}

        class Pickler(pickle.Pickler):
            def persistent_id(self, o):
                if isinstance(o, _Storage):
                    storages[o.key] = o.flat
                    numel = (counts or {}).get(o.key, o.flat.size)
                    pid = ('storage', storage_types[_STORAGES[o.flat.dtype]], o.key, 'cpu', numel)
                    return pid + (None,) if legacy else pid
                return None

        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue(), storages


def save(path, obj, storage_bytes=None):
    """torch.save layout of `obj` (dicts, lists, tensors); storage_bytes: {key: bytes} to write instead of the data."""
    data, storages = _pickled(obj, legacy=False)
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('archive/data.pkl', data)
        z.writestr('archive/byteorder', 'little')
        for key, flat in storages.items():
            z.writestr(f'archive/data/{key}', (storage_bytes or {}).get(key, flat.tobytes()))
        z.writestr('archive/version', '3\n')


def save_legacy(path, obj, counts=None):
    """torch.save(obj, path, _use_new_zipfile_serialization=False) layout; counts: {key: element count} to claim
    for a storage (in the pickle and before its bytes) instead of its true size."""
    data, storages = _pickled(obj, legacy=True, counts=counts)
    system = {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
    keys = sorted(storages)
    with open(path, 'wb') as f:
        for header in (0x1950a86a20f9469cfc6c, 1001, system):
            f.write(pickle.dumps(header, protocol=2))
        f.write(data + pickle.dumps(keys, protocol=2))
        for key in keys:
            f.write(struct.pack('<q', (counts or {}).get(key, storages[key].size)) + storages[key].tobytes())


def save_state_dict(path, state_dict: dict, legacy=False):
    """torch.save(OrderedDict of tensors) for {key: numpy array}, in the zip (or legacy) format."""
    (save_legacy if legacy else save)(
        path, collections.OrderedDict((k, tensor(v, str(i))) for i, (k, v) in enumerate(state_dict.items())))
