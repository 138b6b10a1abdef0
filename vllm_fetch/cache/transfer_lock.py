"""One transfer per machine per URL: a file lock per cache key (or expected sha256).

Whoever downloads a URL into the cache holds ``<cache>/locks/<hash>.lock`` until the file is
published and stored; processes (and other connections) that want the same URL for any target
wait for it, then look at the cache again and copy or link the finished body with zero
requests. The lock is an ``flock``: a holder that is killed lets go at once, and a waiter takes
over the transfer. Correctness never depends on it: without locks (``VLLM_FETCH_DISABLE_LOCKS``,
a read-only cache, a filesystem where locks do nothing) each caller transfers on its own.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..core.deadline import Deadline
from ..core.urls import redact_url
from ..download.locking import locks_enabled
from ..errors import FetchTimeoutError

logger = logging.getLogger("vllm_fetch.cache")


@dataclass
class Held:
    """A transfer lock this caller holds; ``waited``: another caller held it first."""

    lock: FileLock
    waited: bool

    def release(self) -> None:
        self.lock.release()


def lock_name(key: str, expected_sha256: str | None) -> str:
    """Callers that want the same bytes share a lock: by sha256 when it is known, else by key."""
    what = f"sha256:{expected_sha256.lower()}" if expected_sha256 else f"key:{key}"
    return hashlib.sha256(what.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def hold(directory: Path, name: str, deadline: Deadline, url: str) -> Held | None:
    """Take the transfer lock ``name`` (waiting within the deadline); None when locks are off
    or the lock cannot be made here (the caller then transfers without one)."""
    if not locks_enabled():
        return None
    path = directory / "locks" / f"{name}.lock"
    try:
        path.parent.mkdir(exist_ok=True)
        lock = FileLock(path, thread_local=False)
        try:
            lock.acquire(timeout=0)
            return Held(lock, waited=False)
        except Timeout:
            pass
        logger.info("waiting for another download of %s on this machine", redact_url(url))
        remaining = deadline.remaining()
        lock.acquire(timeout=-1 if remaining is None else remaining)
    except Timeout:
        safe = redact_url(url)
        raise FetchTimeoutError(f"timed out after {deadline.timeout:g} s waiting for another "
                                f"download of {safe}", url=safe) from None
    except OSError as exc:
        logger.debug("no transfer lock in %s (%s): downloading without one", directory, exc)
        return None
    return Held(lock, waited=True)
