"""Read PyTorch `torch.save` files into numpy, without torch and without trusting them.

Both of torch's layouts are read:
- the zip archive (torch >= 1.6): `<prefix>/data.pkl`, a pickle of the saved object whose tensors point at
  storages, and `<prefix>/data/<key>`, the raw little-endian bytes of each storage;
- the legacy stream (torch < 1.6, or `_use_new_zipfile_serialization=False`; e.g. pytorch-fid's Inception
  weights): five pickles (magic number, protocol version, system info, the object, its storage keys), then
  for each key in that order the storage's element count (int64) and its raw bytes.
Every pickle is read with one unpickler that resolves only the globals a checkpoint needs (tensor rebuilding,
storage types, OrderedDict, numpy scalars and dtypes); anything else (`os.system`, `builtins.eval`, ...) is
refused before it is called. Every size is checked before anything is allocated for it: a pickle's length
fields against the bytes that follow, storages against the file and MAX_STORAGE_BYTES, tensor views against
their storage. Tensors come back as numpy arrays.
"""
import collections
import io
import math
import os
import pickle
import pickletools
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
LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950a86a20f9469cfc6c, 1001  # the first two pickles of a legacy file
_NEITHER = ('neither a torch.save zip archive (torch >= 1.6) nor a legacy torch.save file (torch < 1.6): damaged, '
            'or not written by torch.save')


class PthError(ValueError):
    """A .pth file that cannot be read safely: not a torch file, truncated, or asking for a refused global."""


class _Storage:
    """A storage of the file: its dtype, key and element count; the bytes are read when a tensor uses it."""

    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.nbytes = numel * dtype.itemsize


def _check_size(key, nbytes, available=math.inf):
    """Refuses a storage before anything is allocated for it: a negative size, over the cap, or past the file."""
    if nbytes < 0:
        raise PthError(f'storage {key} has a negative size ({nbytes:,} bytes): the file is corrupt')
    if nbytes > MAX_STORAGE_BYTES:
        raise PthError(f'storage {key} claims {nbytes:,} bytes, over the limit of {MAX_STORAGE_BYTES:,}: '
                       f'refused before reading')
    if nbytes > available:
        raise PthError(f'storage {key} has {available:,} bytes, expected {nbytes:,}: the file is truncated')


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
    """Resolves only the allowed globals; storages are placeholders (one per key) read from the file afterwards."""

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages  # {key: _Storage} of the whole file

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise PthError(f'refused to load {module}.{name}: a checkpoint holds only tensors, numbers and '
                           f'containers, so this file is not a plain checkpoint (it would run code when unpickled)')
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid):
        # ('storage', type, key, location, numel); the legacy format appends the storage-view metadata.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == 'storage' and pid[1] in _STORAGE_DTYPES
                and type(pid[4]) is int):
            raise PthError(f'unexpected persistent id {pid!r:.80}')
        if len(pid) == 6 and pid[5] is not None:
            raise PthError(f'storage {pid[2]} is a view of another storage, which only torch < 0.4 wrote: load the '
                           f'file in torch and save it again')
        claimed = _Storage(np.dtype(_STORAGE_DTYPES[pid[1]]), str(pid[2]), pid[4])
        _check_size(claimed.key, claimed.nbytes)
        storage = self.storages.setdefault(claimed.key, claimed)
        if (storage.dtype, storage.numel) != (claimed.dtype, claimed.numel):
            raise PthError(f'storage {claimed.key} is named with two different types or sizes: the file is corrupt')
        return storage


class _Bounded:
    """A file that reads no further than `end` (pickle's readers allocate whatever size a length field claims)."""

    def __init__(self, f, end):
        self.f, self.end = f, end

    def read(self, n):
        return self.f.read(min(n, self.end - self.f.tell()))

    def readline(self):
        return self.f.readline(self.end - self.f.tell())

    def tell(self):
        return self.f.tell()


def _unpickle(f, end, storages: dict):
    """The pickle at f's position (`end`: the file's size) through _Unpickler; f is left just past it.

    Its opcodes are walked first, building nothing, so that a length field claiming more bytes than the file
    holds is refused before the unpickler allocates that much.
    """
    start = f.tell()
    try:
        for _ in pickletools.genops(_Bounded(f, end)):
            pass
        size = f.tell() - start
        f.seek(start)
        return _Unpickler(io.BytesIO(f.read(size)), storages).load()
    except PthError:
        raise
    except Exception as e:  # noqa: BLE001 -- any malformed pickle gets the same answer
        raise PthError(f'cannot read its pickle at byte {start:,} ({type(e).__name__}: {e})') from e


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


def _read_zip(f):
    """(saved object with tensor placeholders, read_storage) of a torch.save zip archive."""
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise PthError(f'a damaged zip archive ({e}): truncated, or not written by torch.save') from e
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pickles) != 1:
        raise PthError('a zip file but not a torch checkpoint (no single data.pkl)')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder = archive.read(prefix + 'byteorder').decode() if prefix + 'byteorder' in names else 'little'
    if byteorder != 'little':
        raise PthError(f'written on a {byteorder}-endian machine; only little-endian is supported')
    data = archive.read(pickles[0])
    obj = _unpickle(io.BytesIO(data), len(data), {})

    def read_storage(storage):
        # Not cached: a storage usually backs one tensor, and its bytes are freed once that is copied out.
        name = f'{prefix}data/{storage.key}'
        try:
            _check_size(storage.key, storage.nbytes, archive.getinfo(name).file_size)
        except KeyError:
            raise PthError(f'storage {storage.key} is missing: the file is damaged') from None
        try:
            raw = archive.read(name)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise PthError(f'storage {storage.key} is damaged ({e})') from e
        return np.frombuffer(raw, storage.dtype, storage.numel)

    return obj, read_storage


def _read_legacy(f):
    """(saved object with tensor placeholders, read_storage) of a legacy torch.save stream."""
    end, storages = os.fstat(f.fileno()).st_size, {}
    try:
        magic = _unpickle(f, end, storages)
    except PthError:
        magic = None
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise PthError(_NEITHER)
    protocol = _unpickle(f, end, storages)
    if type(protocol) is not int or protocol != LEGACY_PROTOCOL:
        raise PthError(f'a legacy torch.save file of protocol {protocol!r:.20}, not {LEGACY_PROTOCOL}: damaged')
    info = _unpickle(f, end, storages)
    if not isinstance(info, dict) or info.get('little_endian') is not True:
        raise PthError('written on a big-endian machine (or its header is damaged); only little-endian is supported')
    obj = _unpickle(f, end, storages)
    keys = _unpickle(f, end, storages)
    if not (isinstance(keys, list) and all(type(k) is str for k in keys) and sorted(keys) == sorted(storages)):
        raise PthError(f'its list of {len(keys) if isinstance(keys, list) else "?"} storages does not name the '
                       f'{len(storages)} its tensors use: the file is damaged')
    # The storages follow in the order of that list, each as an int64 element count then its bytes: every
    # offset is found (and every size checked) before any storage is read.
    offsets, position = {}, f.tell()
    for key in keys:
        storage = storages[key]
        f.seek(position)
        count = f.read(8)
        if len(count) < 8:
            raise PthError(f'the file ends before storage {key}: it is truncated')
        numel = int.from_bytes(count, 'little', signed=True)
        _check_size(key, numel * storage.dtype.itemsize, end - position - 8)
        if numel != storage.numel:
            raise PthError(f'storage {key} holds {numel:,} elements, but its tensors were saved over '
                           f'{storage.numel:,}: the file is corrupt')
        offsets[key], position = position + 8, position + 8 + storage.nbytes

    def read_storage(storage):
        f.seek(offsets[storage.key])
        return np.frombuffer(f.read(storage.nbytes), storage.dtype, storage.numel)

    return obj, read_storage


def load(path, keys=None):
    """The object saved by torch.save (zip or legacy format), with every tensor as a numpy array (C order).

    `keys`: for a saved dict, read only these entries (the others are None), so that e.g. an optimiser
    state's tensors are never read into memory.
    """
    check_file(path, 'torch file', 'give the path of a .pth file written by torch.save')
    with open(path, 'rb') as f:
        # torch tells its formats apart the same way: a zip archive starts with a local file header.
        reader = _read_zip if f.read(4) == b'PK\x03\x04' else _read_legacy
        f.seek(0)
        try:
            obj, read_storage = reader(f)
            if keys is not None and isinstance(obj, dict):
                return {k: _materialise(v, read_storage) if k in keys else None for k, v in obj.items()}
            return _materialise(obj, read_storage)
        except PthError as e:
            raise PthError(f'{path}: {e}') from None
