"""statfs(2) for the cache and lock directories: one WARNING when one is on a shared filesystem
(NFS, Lustre, GPFS, CIFS, FUSE ...; decisions and wording in ``core.filesystems``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading

from .core.filesystems import shared_filesystem, shared_warning

logger = logging.getLogger("vllm_fetch")

_checked: set[tuple[str, str]] = set()
_lock = threading.Lock()
_libc: ctypes.CDLL | None = None


def _statfs() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def fs_type(path: str | os.PathLike[str]) -> int | None:
    """``statfs(path).f_type`` (Linux), or None where it cannot be asked."""
    libc = _statfs()
    if libc is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value  # f_type is the first member


def warn_if_shared(path: str | os.PathLike[str], kind: str) -> str | None:
    """Log one WARNING per directory and kind when ``path`` is on a shared filesystem; the
    filesystem's name, or None. Asked once per directory and process."""
    key = (os.fspath(path), kind)
    with _lock:
        if key in _checked:
            return None
        _checked.add(key)
    directory = key[0]
    while directory and not os.path.exists(directory):  # not made yet: its parent decides
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    name = shared_filesystem(fs_type(directory))
    if name is not None:
        logger.warning("%s", shared_warning(kind, key[0], name))
    return name
