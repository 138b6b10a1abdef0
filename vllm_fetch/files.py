"""Crash-safe file publishing: unique temp file beside the target, fsync, rename, fsync dir."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import threading
from pathlib import Path

from .errors import DiskError

logger = logging.getLogger(__name__)


def disk_error(exc: OSError, path: Path) -> DiskError:
    """A typed, non-retryable error for a local write failure."""
    err = DiskError(f"cannot write {path}: {exc.strerror or exc}")
    err.errno = exc.errno
    return err


def create_temp(target: Path) -> tuple[int, Path]:
    """A uniquely named temp file in the target's directory (same filesystem: rename is atomic),
    with the mode a file created there would get (0666 less the umask), not mkstemp's 0600."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise disk_error(exc, target) from exc
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except OSError as exc:
        os.close(fd)
        remove_quietly(Path(name))
        raise disk_error(exc, target) from exc
    return fd, Path(name)


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status`` on Linux 4.7+);
    elsewhere set and restored at once under a lock."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Make a rename durable. Some filesystems cannot fsync a directory: that is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(temp: Path, target: Path) -> Path:
    """Atomically move a complete, fsynced temp file to the target, then fsync the directory."""
    try:
        os.replace(temp, target)
    except OSError as exc:
        raise disk_error(exc, target) from exc
    fsync_dir(target.parent)
    return target


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_all(fd: int, data: bytes | memoryview, path: Path) -> None:
    """os.write until everything is written; disk errors become DiskError."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError as exc:
        raise disk_error(exc, path) from exc


def fsync_fd(fd: int, path: Path) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise disk_error(exc, path) from exc


def pwrite_all(fd: int, data: bytes | memoryview, offset: int, path: Path) -> None:
    """Write everything at ``offset`` (positional: parallel parts share one fd safely)."""
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        raise disk_error(exc, path) from exc


def preallocate(fd: int, size: int, path: Path) -> None:
    """Reserve ``size`` bytes up front, so a full disk fails before any byte is fetched."""
    fallocate = getattr(os, "posix_fallocate", None)
    try:
        if fallocate is None:
            raise OSError(errno.ENOSYS, "no posix_fallocate")
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise disk_error(exc, path) from exc
        try:
            os.ftruncate(fd, size)  # no fallocate here (some network filesystems): sparse file
        except OSError as inner:
            raise disk_error(inner, path) from inner


def pwritev_all(fd: int, buffers: list[bytes], offset: int, path: Path) -> None:
    """Write several buffers at ``offset`` in one call, without joining them first."""
    views = [memoryview(b) for b in buffers if b]
    try:
        while views:
            written = os.pwritev(fd, views, offset)
            offset += written
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]
    except OSError as exc:
        raise disk_error(exc, path) from exc


def publish_bytes(data: bytes, target: Path) -> Path:
    """Write ``data`` at ``target`` as every download is: a temp file beside it, fsynced, then
    renamed over it (``DiskError`` when it cannot be written; nothing is left half-written)."""
    fd, temp = create_temp(target)
    try:
        write_all(fd, data, temp)
        fsync_fd(fd, temp)
        os.close(fd)
        fd = -1
        return publish(temp, target)
    except DiskError:
        raise
    except OSError as exc:
        raise disk_error(exc, target) from exc
    finally:
        if fd >= 0:
            os.close(fd)
        remove_quietly(temp)
