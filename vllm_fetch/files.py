"""Crash-safe file publishing: unique temp file beside the target, fsync, rename, fsync dir."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .core.partial_names import TEMP_NAME_BYTES, clip_name
from .core.targets import target_refusal
from .errors import DiskError

logger = logging.getLogger(__name__)


def disk_error(exc: OSError, path: Path) -> DiskError:
    """A typed, non-retryable error for a local write failure."""
    err = DiskError(f"cannot write {path}: {exc.strerror or exc}")
    err.errno = exc.errno
    return err


def checked_target(given: str | os.PathLike[str]) -> Path:
    """The download target ``given`` names, refused before anything is fetched when a download
    must not rename over it: a directory (``EISDIR``; also a path that ends in a separator,
    ``.`` or ``..``, which name one), or a device, FIFO or socket (``core.targets``), or a
    symlink to one."""
    text = os.fspath(given)
    target = Path(text)
    if text.endswith(("/", os.sep)) or os.path.basename(text) in (".", ".."):
        err = DiskError(f"cannot write {text}: it names a directory, not a file")
        err.errno = errno.EISDIR
        raise err
    try:
        mode: int | None = os.lstat(target).st_mode
        if mode is not None and stat.S_ISLNK(mode):  # -o /dev/stdout: what the link names
            mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None  # absent, or a dangling link (the rename replaces the link itself)
    except OSError as exc:
        raise disk_error(exc, target) from exc
    refusal = target_refusal(mode)
    if refusal is not None:
        err = DiskError(f"cannot write {target}: it {refusal[1]}")
        err.errno = refusal[0]
        raise err
    return target


def create_temp(target: Path) -> tuple[int, Path]:
    """A uniquely named temp file in the target's directory (same filesystem: rename is atomic),
    with the mode a file created there would get (0666 less the umask), not mkstemp's 0600."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, suffix=".tmp",
                                    prefix=f".{clip_name(target.name, TEMP_NAME_BYTES)}.")
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
    """Give the file its full size up front, as a sparse file (no blocks until written, so an
    interrupted partial takes on disk what arrived, not the whole file), after checking the
    filesystem has room for the rest: a full disk fails before any byte is fetched."""
    try:
        info, space = os.fstat(fd), os.fstatvfs(fd)
        if space.f_bavail * space.f_frsize + info.st_blocks * 512 < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.ftruncate(fd, size)
    except OSError as exc:
        raise disk_error(exc, path) from exc


class TempFile:
    """A temp file beside a target (:func:`create_temp`), open for writing until closed."""

    def __init__(self, target: Path) -> None:
        self.fd, self.path = create_temp(target)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def temp_beside(target: Path) -> Iterator[TempFile]:
    """A :class:`TempFile` for ``target``, closed and removed on the way out unless it was
    published meanwhile; an ``OSError`` inside is a ``DiskError`` naming the target."""
    temp = TempFile(target)
    try:
        yield temp
    except DiskError:
        raise
    except OSError as exc:
        raise disk_error(exc, target) from exc
    finally:
        temp.close()
        remove_quietly(temp.path)


def publish_bytes(data: bytes, target: Path) -> Path:
    """Write ``data`` at ``target`` as every download is: a temp file beside it, fsynced, then
    renamed over it (``DiskError`` when it cannot be written; nothing is left half-written)."""
    with temp_beside(target) as temp:
        write_all(temp.fd, data, temp.path)
        fsync_fd(temp.fd, temp.path)
        temp.close()
        return publish(temp.path, target)


#: ``sync_file_range(2)`` flag: start writing the range's dirty pages, do not wait for them.
_SYNC_FILE_RANGE_WRITE = 2
_writeback: Callable[[int, int, int, int], int] | None = None
_writeback_loaded = False
_writeback_lock = threading.Lock()


def _load_writeback() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    global _writeback, _writeback_loaded
    with _writeback_lock:
        if not _writeback_loaded:
            _writeback_loaded = True
            if sys.platform.startswith("linux"):
                try:
                    func = ctypes.CDLL(None, use_errno=True).sync_file_range
                    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_uint]
                    func.restype = ctypes.c_int
                    _writeback = func
                except (OSError, AttributeError):
                    _writeback = None
    return _writeback


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing a file's dirty pages to disk now, without waiting
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``; ``length`` 0: to the end of the file).

    A download calls this as it goes, so the disk writes while the network reads and the one
    fsync before the rename (the durability contract) finds little left to do: without it, the
    whole file is written back inside that fsync. Durability is unchanged (only the fsync
    promises anything). A no-op where the call does not exist or fails.
    """
    func = _writeback if _writeback_loaded else _load_writeback()
    if func is not None:
        func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # an error only means no head start


class WriteBehind:
    """Starts writeback of one file (:func:`start_writeback`) from a helper thread, so the
    writer never waits: ``sync_file_range`` blocks while the disk's request queue is full,
    which on a busy disk would stall the network reads behind it. :meth:`poke` asks for one
    more round (rounds asked while one runs merge); :meth:`close` waits for the thread. The
    thread uses its own duplicate of the descriptor and exits when idle."""

    IDLE_EXIT = 1.0

    def __init__(self) -> None:
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def poke(self, fd: int) -> None:
        with self._lock:
            if self._closed:
                return
            self._due.set()
            if self._thread is None:
                try:
                    own = os.dup(fd)
                except OSError:
                    return
                self._thread = threading.Thread(target=self._run, args=(own,), daemon=True,
                                                name="vllm_fetch-writeback")
                self._thread.start()

    def _run(self, fd: int) -> None:
        try:
            while True:
                if not self._due.wait(self.IDLE_EXIT):
                    with self._lock:
                        if not self._due.is_set():
                            self._thread = None
                            return
                    continue
                self._due.clear()
                if self._closed:
                    return
                start_writeback(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """No more rounds; returns once the thread (and its descriptor) is gone."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            self._due.set()
        if thread is not None:
            thread.join()
