"""Data parallelism: one device mesh, batch sharding over it, and multi-host start-up.

Every compiled program is an ordinary `jax.jit` whose inputs carry `NamedSharding`s: the batch axis
is split over the mesh axis 'data', parameters are replicated, and XLA inserts the gradient
all-reduce. On several hosts each process feeds only its own rows of the global batch.
"""
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'data'


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
    """Join a multi-process run (TPU pods and SLURM/GPU clusters auto-detect; otherwise pass all three)."""
    # CPU-only runs (tests, loopback) need a cross-process collective backend; other platforms ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh, axis 'data', over `devices` (default: every device of every process)."""
    return Mesh(np.array(jax.devices() if devices is None else devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters and optimiser state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Sharding of a batch whose axis `leading_axes` is the example axis, split over the mesh."""
    return NamedSharding(mesh, P(*([None] * leading_axes), AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = 'training.batch_size'):
    """Raise a clear error unless the global batch splits evenly over devices and processes."""
    n, hosts = mesh.devices.size, jax.process_count()
    if batch_size % n or batch_size % hosts:
        raise ValueError(f'{what}={batch_size} is not divisible by the {n} device(s) of the mesh '
                         f'({hosts} process(es)): use a multiple of {n}, e.g. --config.{what}='
                         f'{max(n, batch_size // n * n)}')


def global_batch(local, mesh: Mesh, leading_axes: int = 0) -> jax.Array:
    """This process's rows (..., local_batch, ...) -> the global sharded array (..., global_batch, ...)."""
    sharding = batch_sharding(mesh, leading_axes)
    shape = list(local.shape)
    shape[leading_axes] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, local, tuple(shape))


def any_process(flag: bool) -> bool:
    """True if `flag` is true on any process (every process must call this at the same point)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def gather(x) -> np.ndarray:
    """A global (possibly multi-host) array as one numpy array on every process."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else x)


def pad_rows(chunk, rows: int) -> np.ndarray:
    """(n, ...) -> (rows, ...) by repeating the last row, so every call of a compiled function has one shape."""
    chunk = np.asarray(chunk)
    return np.concatenate([chunk, np.repeat(chunk[-1:], rows - len(chunk), 0)]) if len(chunk) < rows else chunk


def is_main_process() -> bool:
    """Only process 0 writes logs, TensorBoard events and images."""
    return jax.process_index() == 0
