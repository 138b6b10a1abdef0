"""For filesystems whose file locks do nothing (some NFS/Lustre mounts): detect them, and then
serialise every use of the index across processes with a lock that needs no file locking.

SQLite keeps its database consistent between processes with ``fcntl`` locks. Where those
succeed without locking anything, two processes writing at once corrupt it. ``lock_support``
tells: two open file descriptions of one probe file must not both get an exclusive ``flock``
(in one process, as between two). When they do, the index uses SQLite's rollback journal (no
shared-memory WAL index) and ``DirMutex`` — ``mkdir`` is atomic on every filesystem, NFS too —
around every open, operation and close.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

#: A mutex directory older than this belongs to a process that died holding it.
STALE_AFTER = 15.0
_POLL = 0.001


class LockSupport(enum.Enum):
    WORKS = "works"
    NO_OP = "no-op"  # locks "succeed" without excluding anyone
    FAILS = "fails"  # locks fail (ENOSYS, ENOLCK, EOPNOTSUPP): SQLite fails too


def lock_support(directory: Path) -> LockSupport:
    """How file locks behave in ``directory`` (WORKS when it cannot be told)."""
    probe = directory / ".lock-probe"
    try:
        first = os.open(probe, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return LockSupport.WORKS
    try:
        second = os.open(probe, os.O_RDWR)
    except OSError:
        os.close(first)
        return LockSupport.WORKS
    try:
        try:
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            busy = exc.errno in (errno.EAGAIN, errno.EACCES)
            return LockSupport.WORKS if busy else LockSupport.FAILS
        try:
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return LockSupport.WORKS
        return LockSupport.NO_OP
    finally:
        os.close(second)
        os.close(first)


class DirMutex:
    """A cross-process mutex made of one directory (re-entrant within a process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._local:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    with contextlib.suppress(FileNotFoundError):
                        os.rmdir(self.path)

    def _acquire(self) -> None:
        while True:
            try:
                os.mkdir(self.path)
                return
            except FileExistsError:
                self._break_if_stale()
                time.sleep(_POLL)

    def _break_if_stale(self) -> None:
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return
        if age > STALE_AFTER:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
