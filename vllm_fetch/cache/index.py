"""The cache index: diskcache (multi-process safe SQLite) mapping cache keys to entries.

Values are JSON (uncompressed), never pickles: a tampered index can at
worst lose entries, not run code. Keys:

- ``<64 hex>``: the entry (``CacheEntry.to_dict()``) for ``core.cache_policy.cache_key(url)``;
- ``u:<64 hex>``: when the entry was last served (unix seconds), written at most once a minute
  per key and process, so a hit is a read, not a write; an entry's last use is the later of
  this and its ``stored_at`` (a store is not a second write);
- ``n:blob-bytes``: a running total of blob bytes, the cheap trigger for eviction;
- ``s:<sha256>``: the seal (``cache/seal.py``) of the blob with that sha256, for a copy made by
  naming the sha256 alone (``download_file(expected_sha256=…)`` from any URL's copy).

A corrupt or unreadable index (fault D8) is logged at WARNING, moved aside and rebuilt empty;
when even that fails the index is bypassed (every lookup a miss), never an error for a fetch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import diskcache

from ..core.cache_policy import CacheEntry
from .blobs import is_sha256

logger = logging.getLogger("vllm_fetch.cache")

BYTES_KEY = "n:blob-bytes"
#: Seconds between two last-used writes for one key from one process.
TOUCH_RESOLUTION = 60.0
MAX_TOUCHED = 100_000
_DB_FILE = "cache.db"
_T = TypeVar("_T")
_ERRORS = (sqlite3.Error, OSError, ValueError, TypeError, KeyError)


class JSONDisk(diskcache.Disk):  # type: ignore[misc]
    """Keys and values as plain JSON. diskcache's own JSONDisk always runs them through zlib,
    which releases the GIL on every lookup: costly on an event loop shared with other threads."""

    def put(self, key: Any) -> Any:
        return super().put(json.dumps(key).encode())

    def get(self, key: Any, raw: bool) -> Any:
        return json.loads(super().get(key, raw))

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not read:
            value = json.dumps(value).encode()
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str, value: Any, read: bool) -> Any:
        data = super().fetch(mode, filename, value, read)
        return data if read else json.loads(data)


class _Closer:
    __slots__ = ("con",)

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()


class _ClosingLocal(threading.local):
    """diskcache keeps one SQLite connection per thread in its ``_local`` and closes only the
    calling thread's. Here each one is closed when its thread ends: Python 3.13 warns about a
    connection collected unclosed (ResourceWarning, fault D7), e.g. from asyncio.to_thread."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "con" and value is not None:
            super().__setattr__("closer", _Closer(value))


class Index:
    """diskcache behind a guard: any storage error is a warning and a miss, never a crash."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}
        self._db: diskcache.Cache | None = self._open(rebuild=True)

    @property
    def available(self) -> bool:
        return self._db is not None

    # -- opening, rebuilding, bypassing -------------------------------------------------------
    def _connect(self) -> diskcache.Cache:
        path = self.directory / _DB_FILE
        if path.is_file():  # a damaged file fails here, not inside diskcache's constructor,
            with contextlib.closing(sqlite3.connect(path)) as probe:  # which leaks its connection
                probe.execute("PRAGMA schema_version").fetchall()
        db = diskcache.Cache(
            str(self.directory), disk=JSONDisk,
            eviction_policy="none", statistics=False, tag_index=False, timeout=10,
        )
        db.close()  # the connection diskcache opened in __init__, before its local is swapped
        db._local = _ClosingLocal()
        try:
            db.get("n:probe")  # fail now on a file that is not a database
        except BaseException:
            db.close()
            raise
        return db

    def _open(self, *, rebuild: bool) -> diskcache.Cache | None:
        try:
            return self._connect()
        except _ERRORS as exc:
            if not rebuild:
                logger.warning("cache index %s is unusable (%s); bypassing it",
                               self.directory, exc)
                return None
            logger.warning("cache index %s is corrupt or unreadable (%s); rebuilding it",
                           self.directory, exc)
            self._quarantine()
            return self._open(rebuild=False)

    def _quarantine(self) -> None:
        """Move the damaged database aside (kept for inspection), so a fresh one can be made."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            path = self.directory / (_DB_FILE + suffix)
            try:
                path.rename(path.with_name(f"{path.name}.corrupt-{stamp}"))
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot move the damaged cache index %s aside: %s", path, exc)

    def _guard(self, what: str, op: Callable[[diskcache.Cache], _T], default: _T) -> _T:
        db = self._db
        if db is None:
            return default
        try:
            return op(db)
        except sqlite3.DatabaseError as exc:  # a damaged file: rebuild
            self._recover(db, what, exc)
        except _ERRORS as exc:  # anything else (locked, I/O): this operation is skipped
            logger.warning("cache index %s: %s failed (%s)", self.directory, what, exc)
        return default

    def _recover(self, db: Any, what: str, exc: BaseException) -> None:
        with self._lock:
            if self._db is not db or db is None:
                return  # another thread already recovered
            logger.warning("cache index %s failed during %s (%s); rebuilding it",
                           self.directory, what, exc)
            with contextlib.suppress(*_ERRORS):
                db.close()
            self._quarantine()
            self._db = self._open(rebuild=False)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    # -- entries ------------------------------------------------------------------------------
    def get(self, key: str) -> CacheEntry | None:
        record = self._guard("lookup", lambda db: db.get(key), None)
        if record is None:
            return None
        try:
            return CacheEntry.from_dict(record)
        except (ValueError, TypeError, AttributeError):
            logger.warning("dropping a malformed cache index record")
            self.delete(key)
            return None

    def commit_many(
        self, items: list[tuple[str, CacheEntry, int]], *, extra_bytes: int = 0
    ) -> int | None:
        """Write new entries (key, entry, blob bytes they added), their last use and the blob
        total in one transaction; the new total (None when the index is unavailable)."""
        for key, entry, _ in items:
            self._touched[key] = entry.stored_at

        def write(db: diskcache.Cache) -> int:
            with db.transact():
                for key, entry, _ in items:
                    db.set(key, entry.to_dict())  # last used: its stored_at until served
                    if entry.seal:
                        db.set("s:" + entry.sha256, entry.seal)
                added = sum(n for *_, n in items) + extra_bytes
                total = int(db.get(BYTES_KEY, 0)) + added
                if added:
                    db.set(BYTES_KEY, total)
            return total

        return self._guard("store", write, None)

    def commit(self, key: str, entry: CacheEntry, added_bytes: int) -> int | None:
        """``commit_many`` for one entry."""
        return self.commit_many([(key, entry, added_bytes)])

    def seal_of(self, sha256: str) -> str:
        """The seal recorded for the blob with this sha256 ("" when none is)."""
        seal = self._guard("lookup", lambda db: db.get("s:" + sha256), None)
        return seal if isinstance(seal, str) else ""

    def forget_seal(self, sha256: str) -> None:
        self._guard("delete", lambda db: db.delete("s:" + sha256), None)

    def set(self, key: str, entry: CacheEntry) -> bool:
        return self._guard("store", lambda db: bool(db.set(key, entry.to_dict())), False)

    def delete(self, key: str) -> None:
        def drop(db: diskcache.Cache) -> None:
            db.delete(key)
            db.delete("u:" + key)

        self._guard("delete", drop, None)

    def touch(self, key: str, now: float) -> None:
        """Record a use; at most one write per key per ``TOUCH_RESOLUTION`` in this process."""
        if now - self._touched.get(key, 0.0) < TOUCH_RESOLUTION:
            return
        if len(self._touched) > MAX_TOUCHED:
            self._touched.clear()  # bounded memory; at worst one extra write per key
        self._touched[key] = now
        self._guard("touch", lambda db: db.set("u:" + key, now), None)

    def items(self) -> Iterator[tuple[str, CacheEntry, float]]:
        """(key, entry, last used) for every well-formed entry; malformed ones are skipped."""
        def entry_keys(db: diskcache.Cache) -> list[str]:
            return [k for k in db.iterkeys() if isinstance(k, str) and is_sha256(k)]

        none: list[str] = []
        keys = self._guard("listing", entry_keys, none)
        for key in keys:
            entry = self.get(key)
            if entry is not None:
                used = self._last_used(key)
                served = float(used) if isinstance(used, (int, float)) else 0.0
                yield key, entry, max(served, entry.stored_at)

    def _last_used(self, key: str) -> Any:
        return self._guard("listing", lambda db: db.get("u:" + key), None)

    # -- the blob byte counter ----------------------------------------------------------------
    def add_bytes(self, delta: int) -> int:
        """Add to the running blob total (atomic across processes); the new total."""
        def add(db: diskcache.Cache) -> int:
            with db.transact():  # diskcache's incr assumes pickled ints; this index holds JSON
                total = int(db.get(BYTES_KEY, 0)) + delta
                db.set(BYTES_KEY, total)
            return total

        return self._guard("count", add, 0)

    def set_bytes(self, total: int) -> None:
        self._guard("count", lambda db: db.set(BYTES_KEY, total), None)

    def clear(self) -> None:
        self._touched.clear()
        self._guard("clear", lambda db: db.clear(), 0)

    def raw(self) -> Any:
        """The diskcache object (None when bypassed), for tests and diagnostics."""
        return self._db
