"""A workdir lock: one writer of each kind at a time, with the holder named, and a killed holder's lock taken over.

`<workdir>/.lock_<kind>` carries an advisory lock (flock) while a run holds it, and the holder's host,
process id, mode and start time; the run removes it when it ends or is refused, so a workdir keeps no trace of
its runs' locks. The kernel releases the lock when the holder exits, however it exits (SIGKILL included), so a
lock file left behind by a killed run is taken over at once; the new holder says whose it was. (flock, not POSIX record locks: those are dropped when the process closes any descriptor of
the file.) Training and import share the kind 'checkpoints' (both write checkpoints);
every other mode locks its own kind, so an evaluation can run beside a training of the same workdir.
In a multi-process run process 0 holds the lock for all.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket

from absl import logging

from subspace_diffusion.run import parallel

KINDS = {'train': 'checkpoints', 'import': 'checkpoints'}


class WorkdirLocked(ValueError):
    """Another live run holds the workdir for this kind of writing."""


class WorkdirLock:
    """Context manager: hold <workdir>/.lock_<kind> for `mode`, or raise WorkdirLocked naming the holder."""

    def __init__(self, workdir, mode: str):
        self.path = os.path.join(workdir, f'.lock_{KINDS.get(mode, mode)}')
        self.mode, self.fd = mode, None

    def __enter__(self):
        problem = self._acquire() if parallel.is_main_process() else None
        if parallel.any_process(problem is not None):
            raise WorkdirLocked(problem or 'process 0 could not lock the workdir')
        return self

    def _acquire(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                    raise
                return (f'{os.path.dirname(self.path)} is in use by another run ({_describe(holder)}): wait for it '
                        f'to finish or stop it, or use another --workdir')
            if _names(fd, self.path):
                break
            os.close(fd)  # locked a file its holder removed on leaving: lock the one at the path now
        left = _holder(fd)
        if left:
            logging.info('taking over the workdir lock left by %s, which no longer runs', _describe(left))
        record = {'host': socket.gethostname(), 'pid': os.getpid(), 'mode': self.mode,
                  'since': datetime.datetime.now().isoformat(timespec='seconds')}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self.fd = fd
        return None

    def __exit__(self, *exc):
        if self.fd is not None:
            # Removed while still locked: a run that opened it meanwhile finds, once it gets the lock, that the path
            # names another file or none, and locks afresh.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self.fd)  # releases the lock
            self.fd = None
        return False


def _names(fd, path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd) -> dict:
    """The record in the lock file open as `fd` ({} when empty or unreadable)."""
    try:
        text = os.pread(fd, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return 'holder unknown'
    return (f'--mode={holder.get("mode")} on host {holder.get("host")}, process {holder.get("pid")}, since '
            f'{holder.get("since")}')
