"""The cache directory's generation file: ``core.generations`` tokens in a small file every
process using the directory maps (``mmap``, shared), so a write by any process voids the
memory copies of the others without a read or a system call per hit.

``<cache dir>/generations`` is ``core.generations.BUFFER_BYTES`` (8 KiB) long. It is made
by the first process that needs it, with a random epoch. Every ``CHECK_EVERY`` seconds a
process checks that the file it maps is still the one at that path (a wiped cache directory
makes a new one): if not, it maps the new one and ``on_replaced`` drops what it held.
Changing a slot is one aligned 8-byte store into the page cache: no lock, no fsync (after a
crash of the machine no process holds memory copies).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..core.generations import BUFFER_BYTES, Generations, Stamp

logger = logging.getLogger("vllm_fetch.cache")

FILE_NAME = "generations"
#: Seconds between two checks that the mapped file is still the directory's.
CHECK_EVERY = 1.0


def random_token() -> int:
    return int.from_bytes(os.urandom(8), "little")


class GenerationFile:
    """The mapped generation file of one cache directory (see the module doc)."""

    def __init__(self, directory: Path, on_replaced: Callable[[], None]) -> None:
        self.path = directory / FILE_NAME
        self._on_replaced = on_replaced
        self._lock = threading.Lock()
        self._gens, self._identity = _map(self.path)  # OSError: the caller goes without
        self._check_at = time.monotonic() + CHECK_EVERY

    def after_fork(self) -> None:
        """In a forked child: the shared mapping stays; the lock starts free."""
        self._lock = threading.Lock()

    def _current(self) -> Generations:
        """The generations of the file now at ``path`` (checked at most every CHECK_EVERY s)."""
        if time.monotonic() < self._check_at:
            return self._gens
        return self._recheck()

    def _recheck(self) -> Generations:
        with self._lock:
            if time.monotonic() >= self._check_at:
                self._check_at = time.monotonic() + CHECK_EVERY
                try:
                    st = os.stat(self.path)
                    same = (st.st_dev, st.st_ino) == self._identity
                except OSError:
                    same = False
                if not same:
                    with contextlib.suppress(OSError):
                        self._gens, self._identity = _map(self.path)
                    self._on_replaced()
        return self._gens

    def stamp(self, key: str) -> Stamp:
        return self._current().stamp(key)

    def still_valid(self, stamp: Stamp) -> bool:
        gens = self._gens if time.monotonic() < self._check_at else self._recheck()
        return gens.still_valid(stamp)

    def changed(self, key: str) -> None:
        self._current().changed(key)

    def changed_all(self) -> None:
        self._current().changed_all()


def _map(path: Path) -> tuple[Generations, tuple[int, int]]:
    """Open (or make) the file at ``path``, map it; its generations and (device, inode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        st = os.fstat(fd)
        made = st.st_size < BUFFER_BYTES
        if made:
            os.ftruncate(fd, BUFFER_BYTES)  # never shrinks: a racing maker changes nothing
        mapped = mmap.mmap(fd, BUFFER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)  # the mapping holds its own descriptor
    gens = Generations(memoryview(mapped).cast("Q"), random_token)
    if made:
        gens.changed_all()  # an epoch no stamp of an earlier file can hold
    return gens, (st.st_dev, st.st_ino)
