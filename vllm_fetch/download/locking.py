"""One transfer per machine: a file lock per target, and a note that lets waiters reuse the result.

The lock lives in a lock directory on local disk (``$VLLM_FETCH_LOCK_DIR``, else
``<user cache dir>/vllm_fetch/locks``), named by a hash of the target's absolute path, so nothing
extra sits beside the target. Whoever holds it downloads; the others wait. After publishing, the
holder writes a note (URL hash, size, sha256, the file's inode and mtime); a waiter that gets the
lock afterwards finds the note newer than its own wait and the target unchanged since, and
returns that result instead of downloading again.

Correctness never depends on the lock: with ``VLLM_FETCH_DISABLE_LOCKS=1`` (or on a filesystem
where locks silently do nothing) every writer still has its own partial, verifies, and renames
atomically; only the duplicate transfers come back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import platformdirs
from filelock import AsyncFileLock, FileLock, Timeout

from ..config import env_flag, env_str
from ..core.deadline import Deadline
from ..core.results import DownloadResult
from ..core.urls import redact_url
from ..errors import FetchTimeoutError
from ..filesystems import warn_if_shared

logger = logging.getLogger(__name__)

#: Response headers kept in the note (never cookies or anything that may carry a secret).
NOTE_HEADERS = ("ETag", "Last-Modified", "Content-Type", "Content-Length")


def locks_enabled() -> bool:
    """False when ``VLLM_FETCH_DISABLE_LOCKS`` is set (each writer then transfers on its own)."""
    return not env_flag("VLLM_FETCH_DISABLE_LOCKS")


def lock_dir() -> Path:
    configured = env_str("VLLM_FETCH_LOCK_DIR")
    path = Path(configured) if configured else Path(
        platformdirs.user_cache_dir("vllm_fetch")) / "locks"
    warn_if_shared(path, "lock")  # once per directory and process
    return path


def _lock_timeout(deadline: Deadline) -> float:
    remaining = deadline.remaining()
    return -1 if remaining is None else remaining


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


class TargetLock:
    """The machine-wide lock of one target, and the note of its last published download."""

    def __init__(self, target: Path, url: str) -> None:
        key = hashlib.sha256(os.fsencode(target.resolve())).hexdigest()[:32]
        directory = lock_dir()
        self.lock_path = directory / f"{key}.lock"
        self.note_path = directory / f"{key}.json"
        self.target = target
        self.url = url
        self.since = time.time()

    def _prepare(self) -> bool:
        if not locks_enabled():
            return False
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            logger.warning("cannot create lock dir %s (%s): downloading without a lock",
                           self.lock_path.parent, exc)
            return False
        self.since = time.time()
        return True

    def _timeout_error(self, deadline: Deadline) -> FetchTimeoutError:
        safe = redact_url(self.url)
        return FetchTimeoutError(f"timed out after {deadline.timeout:g} s waiting for another "
                                 f"download of {safe} to {self.target}", url=safe)

    @contextlib.contextmanager
    def hold(self, deadline: Deadline) -> Iterator[None]:
        """Hold the lock (blocking, within the deadline) unless locks are disabled."""
        if not self._prepare():
            yield
            return
        lock = FileLock(self.lock_path, timeout=_lock_timeout(deadline))
        try:
            lock.acquire()
        except Timeout:
            raise self._timeout_error(deadline) from None
        try:
            yield
        finally:
            lock.release()

    @contextlib.asynccontextmanager
    async def ahold(self, deadline: Deadline) -> AsyncIterator[None]:
        """Hold the lock without blocking the event loop (filelock's AsyncFileLock)."""
        if not self._prepare():
            yield
            return
        lock = AsyncFileLock(self.lock_path, timeout=_lock_timeout(deadline))
        try:
            await lock.acquire()
        except Timeout:
            raise self._timeout_error(deadline) from None
        try:
            yield
        finally:
            await lock.release()

    def reusable(self, expected_sha256: str | None, expected_size: int | None
                 ) -> DownloadResult | None:
        """The result another writer published while this one waited, if it still stands."""
        try:
            note = json.loads(self.note_path.read_text("utf-8"))
            stat = os.stat(self.target)
        except (OSError, ValueError):
            return None
        same = (
            isinstance(note, dict)
            and note.get("url") == _url_key(self.url)
            and isinstance(note.get("published"), (int, float)) and note["published"] >= self.since
            and [note.get("ino"), note.get("size"), note.get("mtime_ns")]
            == [stat.st_ino, stat.st_size, stat.st_mtime_ns]
            and (expected_size is None or expected_size == stat.st_size)
            and (expected_sha256 is None or expected_sha256.lower() == note.get("sha256"))
        )
        if not same:
            return None
        logger.info("%s was downloaded by another writer while waiting: reusing it", self.target)
        return DownloadResult(self.target, stat.st_size, note.get("sha256"),
                              int(note.get("status", 200)), dict(note.get("headers") or {}),
                              str(note.get("final_url", "")))

    def record(self, result: DownloadResult) -> None:
        """Leave a note for waiters: what was published at the target, and when."""
        if not locks_enabled():
            return
        try:
            stat = os.stat(result.path)
            note = {
                "url": _url_key(self.url), "published": time.time(), "ino": stat.st_ino,
                "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": result.sha256,
                "status": result.status, "final_url": redact_url(result.url),
                "headers": {k: v for k, v in result.headers.items()
                            if k.lower() in {h.lower() for h in NOTE_HEADERS}},
            }
            temp = self.note_path.with_name(self.note_path.name + f".{os.getpid()}.tmp")
            temp.write_text(json.dumps(note), "utf-8")
            os.replace(temp, self.note_path)
        except OSError as exc:
            logger.warning("cannot record the download note %s: %s", self.note_path, exc)
