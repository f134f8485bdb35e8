"""Data parallelism: one device mesh, batch sharding over it, and multi-host start-up.

Every compiled program is a `compiler.jit` (jax.jit with our XLA:CPU options) whose inputs carry
`NamedSharding`s: the batch axis is split over the mesh axis 'data', parameters are replicated, and XLA inserts
the gradient all-reduce. On several hosts each process feeds only its own rows of the global batch.
"""
import os
import socket
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'data'


def check_processes(detect: bool, coordinator_address=None, num_processes=None, process_id=None):
    """Raise one ValueError unless the multi-host flags make sense: all three given, or --distributed (`detect`)."""
    given = {'--coordinator_address': coordinator_address, '--num_processes': num_processes,
             '--process_id': process_id}
    missing = [name for name, value in given.items() if value is None]
    if missing and not detect:
        raise ValueError(f'{", ".join(n for n in given if n not in missing)} without {" and ".join(missing)}: give '
                         f'all three on every host, or --distributed to detect them on a TPU pod or cluster')
    if coordinator_address is not None:
        host, _, port = coordinator_address.rpartition(':')
        if not host or not port.isdigit():
            raise ValueError(f'--coordinator_address={coordinator_address} is not host:port: give process 0\'s '
                             f'address and a free port, e.g. --coordinator_address=10.0.0.2:8476')
    if num_processes is not None and num_processes < 1:
        raise ValueError(f'--num_processes={num_processes}: a run has at least 1 process')
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f'--process_id={process_id} is not one of the {num_processes} processes: give each host '
                         f'its own of 0..{num_processes - 1}')


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None, timeout: int = 120):
    """Join a multi-process run (TPU pods and SLURM/GPU clusters auto-detect; otherwise pass all three).

    Every process must join within `timeout` seconds; otherwise this process leaves with one line naming the
    coordinator and the processes it waited for (JAX would wait 300 s in silence and abort with a stack trace).
    """
    # CPU-only runs (tests, loopback) need a cross-process collective backend; other platforms ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    watchdog = threading.Timer(timeout, _startup_timed_out, (coordinator_address, num_processes, process_id, timeout))
    watchdog.daemon = True
    watchdog.start()
    try:
        # JAX's own limit comes later, so the watchdog's line is the one the user sees.
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout + 60)
    except ValueError as e:  # nothing to detect: no TPU pod, SLURM job or other cluster JAX knows
        raise ValueError(f'--distributed found no multi-host environment to join ({e}): give '
                         f'--coordinator_address, --num_processes and --process_id, or leave out --distributed '
                         f'on one machine') from None
    finally:
        watchdog.cancel()


def _startup_timed_out(address, num_processes, process_id, timeout):
    """The watchdog's end of a start-up that did not complete: one line, exit 1 (JAX's wait cannot be interrupted)."""
    where = address or 'the detected coordinator address'
    if process_id == 0:
        others = (f'processes 1..{num_processes - 1}, not all of which connected' if num_processes and num_processes > 2
                  else 'process 1, which never connected')
        line = (f'process 0 waited {timeout} s at {where} for {others}: start the same command on every host (each '
                f'with its --process_id), check that they reach {where}, or give them longer with '
                f'--distributed_timeout')
    else:
        me = f'process {process_id}' if process_id is not None else 'this process'
        state = ('reached' if _reachable(address) else 'could not reach') if address else 'waited for'
        line = (f'{me} {state} the coordinator at {where} (process 0), and not every process joined within {timeout} '
                f's: start process 0 there and every other process, check the address, or give them longer with '
                f'--distributed_timeout')
    sys.stderr.write(f'error: multi-host start-up timed out: {line}\n')
    sys.stderr.flush()
    os._exit(1)


def _reachable(address) -> bool:
    """Whether something accepts TCP connections at host:port."""
    if not address:
        return False
    host, _, port = address.rpartition(':')
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except OSError:
        return False


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
