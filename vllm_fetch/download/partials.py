"""Partial files kept for resume: one per writer, beside the target, with a JSON sidecar.

Every writer (thread, task or process) writes its own uniquely named partial
(``.NAME.URLHASH.HOST~PID~TOKEN.part``), so two writers never share a file even when the machine
lock does nothing. A later writer continues an *abandoned* partial (its process is gone, or it
was left by an earlier attempt of this process) by renaming it to its own name: rename is atomic,
so exactly one writer wins it. The sidecar (``….part.json``) holds the validators (ETag,
Last-Modified), the total size and, for a parallel download, each part's progress.

Resuming one sequential stream re-hashes the bytes already on disk once (local reads, no
network) to restore the running sha256; within one call the hasher is kept in memory instead.
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
import threading
import time
from pathlib import Path

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
from ..files import disk_error, fsync_dir, fsync_fd, pwrite_all, pwritev_all, remove_quietly

logger = logging.getLogger(__name__)

HASH_READ_SIZE = 1024 * 1024

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


def _read_state(path: Path, url: str) -> PartialState | None:
    try:
        state = PartialState.from_dict(json.loads(_sidecar(path).read_text("utf-8")))
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
                if should_discard_stale(entry.stat().st_mtime, now):
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
        #: (offset, hasher) of the bytes on disk, kept between attempts of one call.
        self.hashed: tuple[int, hashlib._Hash] | None = None

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
                if owner is None or entry.path in _active:
                    continue
                with contextlib.suppress(OSError):
                    stat = entry.stat()
                    alive = owner.host == host and _pid_alive(owner.pid)
                    if may_take_over(owner, host=host, pid=pid, pid_alive=alive,
                                     idle=now - stat.st_mtime):
                        found.append((stat.st_size, Path(entry.path)))
        return [path for _, path in sorted(found, key=lambda item: -item[0])]

    @staticmethod
    def _take_over(candidate: Path, mine: Path) -> bool:
        """Rename ``candidate`` to ``mine``; False when another writer took it first."""
        try:
            os.rename(candidate, mine)
        except OSError:
            return False
        with contextlib.suppress(OSError):
            os.rename(_sidecar(candidate), _sidecar(mine))
        return True

    # -- bytes on disk ---------------------------------------------------------------------
    def open(self) -> int:
        if self.fd < 0:
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise disk_error(exc, self.path) from exc
        return self.fd

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
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
        temp = sidecar.with_name(sidecar.name + ".tmp")
        try:
            temp.write_text(json.dumps({**state.to_dict(), "url": _url_key(state.url)}), "utf-8")
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
        self.hashed = None
        self.save(None)

    def write(self, data: bytes | memoryview, offset: int) -> None:
        pwrite_all(self.open(), data, offset, self.path)

    def write_chunks(self, chunks: list[bytes], offset: int) -> None:
        pwritev_all(self.open(), chunks, offset, self.path)

    def hasher_at(self, offset: int) -> hashlib._Hash:
        """A sha256 of bytes ``[0, offset)``: kept from this call, else re-read once from disk."""
        if self.hashed is not None and self.hashed[0] == offset:
            return self.hashed[1]
        return self.hash_range(offset)

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

    def hash_range(self, end: int) -> hashlib._Hash:
        """sha256 of the first ``end`` bytes on disk (read in order)."""
        hasher = hashlib.sha256()
        fd = self.open()
        position = 0
        try:
            while position < end:
                block = os.pread(fd, min(HASH_READ_SIZE, end - position), position)
                if not block:
                    break
                hasher.update(block)
                position += len(block)
        except OSError as exc:
            raise disk_error(exc, self.path) from exc
        return hasher

    # -- endings ---------------------------------------------------------------------------
    def publish(self) -> Path:
        """fsync the file, ``os.replace`` it onto the target, fsync the directory."""
        fd = self.open()
        fsync_fd(fd, self.path)
        self._close()
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
        self.hashed = None

    def _close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def _release(self) -> None:
        with _active_lock:
            _active.discard(str(self.path))


def _discards(error: BaseException | None) -> bool:
    """Bytes that failed verification, or a failing disk, are never kept for resume."""
    return isinstance(error, (DiskError, ChecksumMismatchError, SizeLimitExceededError))
