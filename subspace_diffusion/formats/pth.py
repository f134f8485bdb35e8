"""Read PyTorch `torch.save` files (zip format, torch >= 1.6) into numpy, without torch and without trusting them.

A .pth file is a zip archive: `<prefix>/data.pkl` (a pickle of the saved object whose tensors point at
storages) and `<prefix>/data/<key>` (the raw little-endian bytes of each storage). The pickle is read
with an unpickler that resolves only the globals a checkpoint needs (tensor rebuilding, storage types,
OrderedDict, numpy scalars and dtypes); anything else (`os.system`, `builtins.eval`, ...) is refused
before it is called. Tensors come back as numpy arrays; views are bounds-checked against their storage.
"""
import collections
import io
import math
import pickle
import zipfile
import zlib

import numpy as np

from subspace_diffusion.formats.files import check_file

# Storage class name -> numpy dtype (the pickled persistent id names the class, not the dtype).
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16, 'CharStorage': np.int8,
    'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


MAX_STORAGE_BYTES = 1 << 34  # 16 GiB: far above any published network, far below a made-up claim


class PthError(ValueError):
    """A .pth file that cannot be read safely: not a zip checkpoint, truncated, or asking for a refused global."""


class _Storage:
    """A storage of the archive: its dtype and key; the bytes are read when a tensor uses it."""

    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel = dtype, key, numel


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2 / _rebuild_tensor: a (bounds-checked) strided view of a storage."""
    del unused  # requires_grad, backward hooks, metadata: meaningless for arrays
    return ('tensor', storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *unused):
    """torch._utils._rebuild_parameter: a Parameter is its data."""
    del unused
    return data


def _numpy_scalar(dtype, raw):
    """numpy.core.multiarray.scalar(dtype, bytes) -> a numpy scalar."""
    if not isinstance(dtype, np.dtype) or not isinstance(raw, bytes):
        raise PthError('numpy scalar with unexpected arguments')
    return np.frombuffer(raw, dtype=dtype, count=1)[0]


def _numpy_dtype(name, align=False, copy=False):
    """numpy.dtype(name, align, copy) for plain numeric names only."""
    del align, copy
    dtype = np.dtype(name)
    if dtype.kind not in 'biuf':
        raise PthError(f'refused numpy dtype {name!r}')
    return dtype


def _codecs_encode(text, encoding='utf-8'):
    """_codecs.encode, which protocol-2 pickles use to write bytes (e.g. a numpy scalar's payload)."""
    if encoding not in ('latin1', 'latin-1'):
        raise PthError(f'refused text encoding {encoding!r}')
    return text.encode(encoding)


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,  # numpy 1.x writers (the released checkpoints)
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,  # numpy 2.x writers
    ('numpy', 'dtype'): _numpy_dtype,
    ('_codecs', 'encode'): _codecs_encode,
}
_ALLOWED.update({('torch', name): name for name in _STORAGE_DTYPES})


class _Unpickler(pickle.Unpickler):
    """Resolves only the allowed globals; storages are placeholders filled from the archive afterwards."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise PthError(f'refused to load {module}.{name}: a checkpoint holds only tensors, numbers and '
                           f'containers, so this file is not a plain checkpoint (it would run code when unpickled)')
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and pid[1] in _STORAGE_DTYPES):
            raise PthError(f'unexpected persistent id {pid!r:.80}')
        _, kind, key, _location, numel = pid
        return _Storage(np.dtype(_STORAGE_DTYPES[kind]), str(key), int(numel))


def _materialise(obj, read_storage):
    """Replace tensor placeholders by numpy arrays, recursively through dicts, lists and tuples."""
    if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == 'tensor':
        _, storage, offset, size, stride = obj
        if any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise PthError(f'tensor with negative size or stride {size} / {stride}')
        # Sizes are checked before anything is allocated: a checkpoint's tensor never holds more elements
        # than its storage (a stride-0 view of a huge shape would allocate without bound).
        numel = math.prod(size)
        if numel > storage.numel:
            raise PthError(f'tensor view of shape {size} ({numel:,} elements) over a storage of {storage.numel:,}: '
                           f'a stride-0 (expanded) view, which checkpoints do not hold; refused before allocating')
        flat = read_storage(storage)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
        if offset < 0 or last >= flat.size:
            raise PthError(f'tensor view (offset {offset}, size {size}, stride {stride}) runs past its storage '
                           f'of {flat.size} elements: the file is corrupt')
        view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * flat.itemsize for s in stride],
                                               writeable=False)
        return np.array(view)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, read_storage)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, read_storage) for v in obj)
    return obj


def load(path, keys=None):
    """The object saved in a torch zip file, with every tensor as a numpy array (C order).

    `keys`: for a saved dict, read only these entries (the others are None), so that e.g. an optimiser
    state's tensors are never read into memory.
    """
    check_file(path, 'torch file', 'give the path of a .pth file written by torch.save')
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise PthError(f'{path} is not a torch.save zip archive ({e}): it is truncated, or was written by '
                       f'torch < 1.6 (re-save it with torch.save(torch.load(f), f) in a newer torch)') from e
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
        if len(pickles) != 1:
            raise PthError(f'{path} is a zip file but not a torch checkpoint (no single data.pkl)')
        prefix = pickles[0][:-len('data.pkl')]
        byteorder = archive.read(prefix + 'byteorder').decode() if prefix + 'byteorder' in names else 'little'
        if byteorder != 'little':
            raise PthError(f'{path} was written on a {byteorder}-endian machine; only little-endian is supported')
        try:
            obj = _Unpickler(io.BytesIO(archive.read(pickles[0]))).load()
        except PthError:
            raise
        except Exception as e:  # noqa: BLE001 -- any malformed pickle gets the same answer
            raise PthError(f'{path}: cannot read its pickle ({type(e).__name__}: {e})') from e

        def read_storage(storage):
            # Not cached: a storage usually backs one tensor, and its bytes are freed once that is copied out.
            name = f'{prefix}data/{storage.key}'
            needed = storage.numel * storage.dtype.itemsize
            try:
                size = archive.getinfo(name).file_size
            except KeyError:
                raise PthError(f'{path}: storage {storage.key} is missing: the file is damaged') from None
            if needed > MAX_STORAGE_BYTES:
                raise PthError(f'{path}: storage {storage.key} claims {needed:,} bytes, over the limit of '
                               f'{MAX_STORAGE_BYTES:,}: refused before reading')
            if size < needed:
                raise PthError(f'{path}: storage {storage.key} has {size} bytes, expected {needed}: the file is truncated')
            try:
                raw = archive.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise PthError(f'{path}: storage {storage.key} is damaged ({e})') from e
            return np.frombuffer(raw, storage.dtype, storage.numel)

        if keys is not None and isinstance(obj, dict):
            return {k: _materialise(v, read_storage) if k in keys else None for k, v in obj.items()}
        return _materialise(obj, read_storage)
