"""Partial files kept for resume: one per writer, beside the target, with a JSON sidecar.

Every writer (thread, task or process) writes its own uniquely named partial
(``.NAME.URLHASH.HOST~PID~TOKEN.part``), so two writers never share a file even when the machine
lock does nothing. A later writer continues an *abandoned* partial (its process is gone, or it
was left by an earlier attempt of this process) by renaming it to its own name: rename is atomic,
so exactly one writer wins it. The sidecar (``….part.json``) holds the validators (ETag,
Last-Modified), the total size and, for a parallel download, each part's progress.

The download's sha256 is read back from the partial (``core.download_machine.hash_ahead``) on
one helper thread per partial (:meth:`Partial.hash_behind`), behind the writes; a resumed
stream's prefix is hashed the same way while the rest arrives (local reads, no network).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..core.download_machine import Reader, Start
from ..core.partial_names import (
    Owner,
    is_partial_of,
    may_take_over,
    owned_partial_name,
    partial_owner,
    safe_host,
    should_discard_stale,
)
from ..core.resume import PartialState, validator_for
from ..errors import ChecksumMismatchError, DiskError, SizeLimitExceededError
from ..files import (
    WriteBehind,
    disk_error,
    fsync_dir,
    fsync_fd,
    pwrite_all,
    remove_quietly,
)
from . import registry

logger = logging.getLogger(__name__)

#: After this many new bytes, the kernel is asked to start writing them to disk (see
#: ``files.start_writeback``), so the fsync at publish is not a full-file writeback.
WRITEBACK_STEP = 8 * 1024 * 1024

_active: set[str] = set()
_active_lock = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _sidecar_temp(path: Path) -> Path:
    """Where a checkpoint of the sidecar is written before it replaces the sidecar."""
    return path.with_name(path.name + ".json.tmp")


#: Partials and sidecars are never opened through a symlink (fault D9).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _check_own_file(fd: int, path: Path, directory_dev: int | None = None) -> None:
    """Refuse anything but a regular file owned by this user (on the target's filesystem)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or (
            directory_dev is not None and info.st_dev != directory_dev):
        raise DiskError(f"{path} is not a regular file of this user: refusing to use it")


def _open_checked(path: Path, flags: int, directory_dev: int | None = None) -> int:
    fd = os.open(path, flags | _NOFOLLOW, 0o666)
    try:
        _check_own_file(fd, path, directory_dev)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_own_regular(path: str) -> bool:
    """Whether ``path`` itself (not what a link points to) is a regular file of this user."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()


def _read_text(path: Path) -> str:
    fd = _open_checked(path, os.O_RDONLY)
    with os.fdopen(fd, "r", encoding="utf-8") as file:
        return file.read()


def _read_state(path: Path, url: str) -> PartialState | None:
    try:
        state = PartialState.from_dict(json.loads(_read_text(_sidecar(path))))
    except (OSError, ValueError) as exc:
        logger.info("partial %s has no usable sidecar (%s): starting over", path.name, exc)
        return None
    if state.url not in (url, _url_key(url)):  # (a plain URL: a sidecar from an older version)
        return None
    return dataclasses.replace(state, url=url)


def _url_key(url: str) -> str:
    """What the sidecar records for the URL: its sha256, never the URL itself (a signed URL's
    query is a credential, and the sidecar sits beside the target for days)."""
    return "sha256:" + hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def clean_stale(target: Path, now: float | None = None) -> None:
    """Delete this target's partials (any URL) not written for ``STALE_PARTIAL_AGE``."""
    now = time.time() if now is None else now
    with contextlib.suppress(OSError), os.scandir(target.parent) as entries:
        for entry in entries:
            if not is_partial_of(entry.name, target.name) or entry.path in _active:
                continue
            with contextlib.suppress(OSError):
                if should_discard_stale(entry.stat(follow_symlinks=False).st_mtime, now):
                    logger.info("removing stale partial %s", entry.name)
                    os.unlink(entry.path)


class Partial:
    """This writer's partial file for one download, and what is known about its bytes."""

    def __init__(self, target: Path, url: str, path: Path, state: PartialState | None,
                 *, keep: bool) -> None:
        self.target = target
        self.url = url
        self.path = path
        self.state = state
        self.keep = keep  # keep for resume after a failure (resume=True)
        self.fd = -1
        self._save_lock = threading.Lock()
        self._noted = False
        self._unflushed = 0  # bytes written since the last writeback was started
        self._write_behind = WriteBehind()
        self._hasher: ThreadPoolExecutor | None = None  # hash_behind's one thread
        self._hashing: Future[None] | None = None
        self._flushing: threading.Thread | None = None

    # -- finding one -----------------------------------------------------------------------
    @classmethod
    def claim(cls, target: Path, url: str, *, resume: bool) -> Partial:
        """This writer's partial: an abandoned one of the same URL taken over, or a new name."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, target) from exc
        owner = Owner(safe_host(socket.gethostname()), os.getpid(), secrets.token_hex(4))
        mine = target.parent / owned_partial_name(target.name, url, owner)
        with _active_lock:
            _active.add(str(mine))
        if resume:
            clean_stale(target)
            for candidate in cls._abandoned(target, url):
                if cls._take_over(candidate, mine):
                    logger.info("resuming partial %s", candidate.name)
                    return cls(target, url, mine, _read_state(mine, url), keep=True)
        return cls(target, url, mine, None, keep=resume)

    @staticmethod
    def _abandoned(target: Path, url: str) -> list[Path]:
        """Partials of this URL whose writers are gone, largest first."""
        found: list[tuple[int, Path]] = []
        host, pid, now = safe_host(socket.gethostname()), os.getpid(), time.time()
        with contextlib.suppress(OSError), os.scandir(target.parent) as entries:
            for entry in entries:
                owner = partial_owner(entry.name, target.name, url)
                if owner is None or entry.path in _active or not _is_own_regular(entry.path):
                    continue  # a symlink or anything else planted there is never taken over
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    alive = owner.host == host and _pid_alive(owner.pid)
                    if may_take_over(owner, host=host, pid=pid, pid_alive=alive,
                                     idle=now - info.st_mtime):
                        found.append((info.st_size, Path(entry.path)))
        return [path for _, path in sorted(found, key=lambda item: -item[0])]

    @staticmethod
    def _take_over(candidate: Path, mine: Path) -> bool:
        """Rename ``candidate`` to ``mine``; False when another writer took it first."""
        try:
            os.rename(candidate, mine)
        except OSError:
            return False
        if not _is_own_regular(str(mine)):  # swapped between the scan and the rename
            remove_quietly(mine)
            return False
        sidecar = _sidecar(candidate)
        if _is_own_regular(str(sidecar)):
            with contextlib.suppress(OSError):
                os.rename(sidecar, _sidecar(mine))
        with contextlib.suppress(OSError):  # a checkpoint torn by the writer's death
            remove_quietly(_sidecar_temp(candidate))
        return True

    # -- bytes on disk ---------------------------------------------------------------------
    def open(self) -> int:
        """The partial's descriptor: never through a symlink, only a regular file of this
        user on the target's filesystem (anything planted under its name is refused)."""
        if self.fd < 0:
            self.fd = self.opener(str(self.path), os.O_RDWR | os.O_CREAT)
        return self.fd

    def opener(self, path: str, flags: int) -> int:
        """``open()``'s opener for this partial (the async runner's aiofiles handles)."""
        try:
            fd = _open_checked(Path(path), flags, os.stat(self.target.parent).st_dev)
        except OSError as exc:
            raise disk_error(exc, self.path) from exc
        if not self._noted:  # listed by `vllm-fetch cache ls --partials`, pruned when abandoned
            self._noted = True
            registry.note(self.path)
        return fd

    def start(self) -> Start:
        """What the machine starts from: the sidecar's state and the partial's size."""
        return Start(self.state, self.size())

    def size(self) -> int:
        if self.fd >= 0:
            try:
                return os.fstat(self.fd).st_size
            except OSError as exc:
                raise disk_error(exc, self.path) from exc
        try:
            return os.lstat(self.path).st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise disk_error(exc, self.path) from exc

    def _size_or_zero(self) -> int:
        try:
            return self.size()
        except OSError:
            return 0

    def contiguous(self) -> int:
        """Bytes valid from 0 of a sequential partial (its size, never past the total)."""
        if self.state is None or self.state.parts is not None:
            return 0
        size = self.size()
        return size if self.state.total is None else min(size, self.state.total)

    def save(self, state: PartialState | None) -> None:
        """Record ``state`` in the sidecar (atomically replaced), or drop the sidecar."""
        self.state = state
        sidecar = _sidecar(self.path)
        if state is None or not self.keep:
            remove_quietly(sidecar)
            return
        temp = _sidecar_temp(self.path)
        with self._save_lock:  # parts checkpoint from several threads
            self._write_sidecar(state, sidecar, temp)

    def _write_sidecar(self, state: PartialState, sidecar: Path, temp: Path) -> None:
        try:
            remove_quietly(temp)
            fd = _open_checked(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(json.dumps({**state.to_dict(), "url": _url_key(state.url)}))
            os.replace(temp, sidecar)
        except OSError as exc:
            remove_quietly(temp)
            raise disk_error(exc, sidecar) from exc

    def reset(self) -> None:
        """Forget every byte: truncate to zero, drop the sidecar and the running hash."""
        fd = self.open()
        try:
            os.ftruncate(fd, 0)
        except OSError as exc:
            raise disk_error(exc, self.path) from exc
        self.save(None)

    def write(self, data: bytes | memoryview, offset: int) -> None:
        pwrite_all(self.open(), data, offset, self.path)
        if self.wrote(len(data)):
            self.write_behind()

    def wrote(self, nbytes: int) -> bool:
        """Count ``nbytes`` written (by this object or another handle on the partial); True
        when :meth:`write_behind` is due. (Parts count from several threads: approximate.)"""
        self._unflushed += nbytes
        if self._unflushed < WRITEBACK_STEP:
            return False
        self._unflushed = 0
        return True

    def write_behind(self) -> None:
        """Have the kernel start writing the partial to disk (from a helper thread: neither
        the call nor the kernel's submission waits here)."""
        self._write_behind.poke(self.open())

    @property
    def hashes_behind(self) -> bool:
        """Whether the helper thread of :meth:`hash_behind` exists (a poke starts none)."""
        return self._hasher is not None

    def hash_behind(self, hash_ahead: Callable[[Reader], None]) -> None:
        """Run ``hash_ahead(self.read_into)`` on this partial's helper thread, unless a run is
        still going (it goes on as far as the writes got): neither the writer nor the event
        loop waits for the hash. Errors there are left to the final, waiting ``hash_ahead``."""
        if self._hashing is not None and not self._hashing.done():
            return
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="vllm_fetch-sha256")
        self._hashing = self._hasher.submit(hash_ahead, self.read_into)

    def flush_ahead(self) -> None:
        """Start the fsync of the bytes written so far on a helper thread (the file's last
        hash runs meanwhile); :meth:`publish` fsyncs again, and waits for it first."""
        if self._flushing is None:
            fd = self.open()
            self._flushing = threading.Thread(target=_fsync_quietly, args=(fd,), daemon=True,
                                              name="vllm_fetch-fsync")
            self._flushing.start()

    def read_into(self, buffer: bytearray, offset: int, size: int) -> memoryview:
        """Read ``size`` bytes at ``offset`` into ``buffer`` (reused: no allocation per read)."""
        view = memoryview(buffer)[:size]
        try:
            got = os.preadv(self.open(), [view], offset)
        except OSError as exc:
            raise disk_error(exc, self.path) from exc
        if got != size:
            raise DiskError(f"{self.path} is shorter than expected ({offset + got} bytes)")
        return view

    # -- endings ---------------------------------------------------------------------------
    def publish(self) -> Path:
        """fsync the file, ``os.replace`` it onto the target, fsync the directory."""
        fd = self.open()
        fsync_fd(fd, self.path)
        opened, named = os.fstat(fd), _lstat_or_none(self.path)
        self._close()
        if named is None or (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
            raise DiskError(f"{self.path} was replaced while downloading: not publishing it")
        try:
            os.replace(self.path, self.target)
        except OSError as exc:
            raise disk_error(exc, self.target) from exc
        fsync_dir(self.target.parent)
        remove_quietly(_sidecar(self.path))
        self._release()
        return self.target

    def abandon(self, error: BaseException | None) -> None:
        """After a failure: keep the bytes for a later resume, or remove them."""
        self._close()
        resumable = self.state is not None and validator_for(self.state) is not None
        if not self.keep or not resumable or _discards(error) or self._size_or_zero() == 0:
            self.discard()  # nothing a later call could safely continue
        self._release()

    def discard(self) -> None:
        """Remove the partial and its sidecar; a failure to do so is logged, never raised
        (it must not hide the error that ended the download)."""
        self._close()
        for path in (self.path, _sidecar(self.path)):
            try:
                remove_quietly(path)
            except OSError as exc:
                logger.warning("cannot remove %s: %s", path, exc)
        self.state = None

    def _close(self) -> None:
        """Stop the helper threads (each uses the descriptor), then close the descriptor.
        A running hash must have been told to stop (``Machine.stop_hashing``) or be done."""
        if self._hasher is not None:
            self._hasher.shutdown(wait=True)
            self._hasher = self._hashing = None
        if self._flushing is not None:
            self._flushing.join()
            self._flushing = None
        self._write_behind.close()
        self._write_behind = WriteBehind()  # a later attempt may write (and poke) again
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def _release(self) -> None:
        with _active_lock:
            _active.discard(str(self.path))


def _fsync_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):  # the fsync before the rename reports any failure
        os.fsync(fd)


def _lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _discards(error: BaseException | None) -> bool:
    """Bytes that failed verification, or a failing disk, are never kept for resume."""
    return isinstance(error, (DiskError, ChecksumMismatchError, SizeLimitExceededError))
