"""One transfer per machine per URL: a file lock per cache key (or expected sha256).

Whoever downloads a URL into the cache holds ``<cache>/locks/<hash>.lock`` until the file is
published and stored; processes (and other connections) that want the same URL for any target
wait for it, then look at the cache again and copy or link the finished body with zero
requests. The lock is an ``flock``: a holder that is killed lets go at once, and a waiter takes
over the transfer. The holder notes its target beside the lock (removed when it is done), so a
waiter that finds the note of a holder that died resumes the transfer into that target, from
the partial left there, and then copies the stored file to its own. Correctness never depends
on the lock: without locks (``VLLM_FETCH_DISABLE_LOCKS``, a read-only cache, a filesystem where
locks do nothing) each caller transfers on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
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
    """A transfer lock this caller holds; ``waited``: another caller held it first;
    ``orphan``: the target of a holder that died mid-transfer (its partial is there)."""

    lock: FileLock
    waited: bool
    note: Path
    orphan: Path | None = None

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.note.unlink()
        self.lock.release()


def _dead_holders_target(note: Path, mine: Path) -> Path | None:
    """The target a holder noted, when that holder (on this host) is gone and the target is
    another path whose directory still exists."""
    try:
        raw = json.loads(note.read_text("utf-8"))
        target, pid, host = Path(raw["target"]), int(raw["pid"]), str(raw["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname() or pid == os.getpid() or _alive(pid):
        return None
    if target == mine.absolute() or not target.parent.is_dir():
        return None
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _write_note(note: Path, target: Path) -> None:
    with contextlib.suppress(OSError):
        temp = note.with_name(f"{note.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps({"target": os.fspath(target.absolute()), "pid": os.getpid(),
                                    "host": socket.gethostname()}), "utf-8")
        os.replace(temp, note)


def lock_name(key: str, expected_sha256: str | None) -> str:
    """Callers that want the same bytes share a lock: by sha256 when it is known, else by key."""
    what = f"sha256:{expected_sha256.lower()}" if expected_sha256 else f"key:{key}"
    return hashlib.sha256(what.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def hold(directory: Path, name: str, deadline: Deadline, url: str,
         target: Path) -> Held | None:
    """Take the transfer lock ``name`` (waiting within the deadline) for a download to
    ``target``; None when locks are off or the lock cannot be made here (the caller then
    transfers without one)."""
    if not locks_enabled():
        return None
    path = directory / "locks" / f"{name}.lock"
    note = path.with_suffix(".json")
    try:
        path.parent.mkdir(exist_ok=True)
        lock = FileLock(path, thread_local=False)
        try:
            lock.acquire(timeout=0)
            return _taken(lock, False, note, target)
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
    return _taken(lock, True, note, target)


def _taken(lock: FileLock, waited: bool, note: Path, target: Path) -> Held:
    orphan = _dead_holders_target(note, target) if note.exists() else None
    _write_note(note, orphan or target)
    return Held(lock, waited, note, orphan)
