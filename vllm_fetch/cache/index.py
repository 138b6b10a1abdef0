"""The cache index: diskcache (multi-process safe SQLite) mapping cache keys to entries.

Values are JSON (uncompressed), never pickles: a tampered index can at
worst lose entries, not run code. Keys:

- ``<64 hex>``: the entry (``CacheEntry.to_dict()``) for ``core.cache_policy.cache_key(url)``;
- ``u:<64 hex>``: when the entry was last served (unix seconds), written at most once a minute
  per key and process, so a hit is a read, not a write; an entry's last use is the later of
  this and its ``stored_at`` (a store is not a second write);
- ``n:blob-bytes``: a running total of what the cache occupies (blobs in whole blocks, plus
  ``ENTRY_COST`` per entry written; a replaced entry counts again until the next prune
  recounts), the cheap trigger for eviction;
- ``s:<sha256>``: the seal (``cache/seal.py``) of the blob with that sha256, for a copy made by
  naming the sha256 alone (``download_file(expected_sha256=…)`` from any URL's copy).

Every change of an entry (write, delete, eviction) and of the whole index (clear, rebuild) is
announced in the cache directory's generation file (``generation_file``) after it committed,
whether or not it succeeded, so no process keeps serving a memory copy of what changed.

Where a small body's record sits in a segment file (``cache/segments.py``) is a row of the
``Segments`` table in the same SQLite database (sha256 → segment, offset, length, seal, when
stored), written in the same transaction as the entries of its group: plain SQL, ~8 us a row
where a diskcache record costs ~45 (its SELECT, INSERT and cull per key).

Only a proven corruption moves the index aside (fault D8, D11): when opening or using it
fails, SQLite's own ``PRAGMA quick_check`` (read-only) decides. A damaged file is logged at
WARNING, moved aside and rebuilt empty; a full disk, a read-only or locked database, locks that
do nothing or fail (some NFS/Lustre mounts) and I/O errors leave the file as it is: the failed
operation is skipped (a lookup is a miss, a store is not made), one WARNING says so, and an
index that could not be opened is tried again after ``REOPEN_AFTER`` seconds. Never an error
for a fetch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii  # what json.dumps writes for a str
from pathlib import Path
from typing import Any, TypeVar

import diskcache

from ..core.body import is_sha256
from ..core.cache_policy import CacheEntry
from ..core.segment_record import Location
from .costs import ENTRY_COST
from .generation_file import GenerationFile
from .index_mutex import DirMutex, LockSupport, lock_support

logger = logging.getLogger("vllm_fetch.cache")

BYTES_KEY = "n:blob-bytes"
#: Seconds between two last-used writes for one key from one process.
TOUCH_RESOLUTION = 60.0
MAX_TOUCHED = 100_000
#: SQLite's write-ahead log is checkpointed every this many pages (4 KiB) and truncated back
#: to that size: beyond the size limit, the index's log occupies at most ~1 MiB (SQLite's
#: default of 1000 pages let a flood of small stores grow it past 4 MB).
WAL_PAGES = 256
#: Seconds before an index that could not be opened (disk full, locks) is tried again.
REOPEN_AFTER = 30.0
_DB_FILE = "cache.db"
_SEGMENTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS Segments (sha256 TEXT PRIMARY KEY, segment TEXT NOT NULL, "
    "offset INTEGER NOT NULL, length INTEGER NOT NULL, seal TEXT NOT NULL, "
    "stored_at REAL NOT NULL) WITHOUT ROWID")
#: One placed record: (sha256, where, seal, when stored).
Placed = tuple[str, Location, str, float]
#: diskcache's ``set`` of a small value, as one statement for many rows (``_set_many``).
_UPSERT = (
    "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, "
    "size, mode, filename, value) VALUES (?, ?, ?, NULL, ?, 0, NULL, 0, ?, NULL, ?) "
    "ON CONFLICT (key, raw) DO UPDATE SET store_time = excluded.store_time, "
    "expire_time = NULL, access_time = excluded.access_time, access_count = 0, tag = NULL, "
    "size = 0, mode = excluded.mode, filename = NULL, value = excluded.value")
#: diskcache's ``get`` of a key (``JSONDisk.put``: its JSON text, a raw blob), as one statement.
_GET = ("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1 "
        "AND (expire_time IS NULL OR expire_time > ?)")
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

    def __init__(self, directory: Path, generations: GenerationFile | None = None) -> None:
        self.directory = directory
        self._generations = generations
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}
        self._warned: set[str] = set()
        self._reopen_at = 0.0
        self._mutex: DirMutex | None = None
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, exist_ok=True)
            if lock_support(directory) is LockSupport.NO_OP:
                logger.info("file locks in %s do nothing: serialising the cache index",
                            directory)
                self._mutex = DirMutex(directory / ".index-mutex")
        self._db: diskcache.Cache | None = self._open(rebuild=True)

    def _serialised(self) -> contextlib.AbstractContextManager[None]:
        """Held around every use of SQLite where file locks do nothing (``index_mutex``)."""
        return self._mutex.held() if self._mutex is not None else contextlib.nullcontext()

    @property
    def available(self) -> bool:
        return self._db is not None

    # -- opening, rebuilding, bypassing -------------------------------------------------------
    def _connect(self) -> diskcache.Cache:
        path = self.directory / _DB_FILE
        if path.is_file():  # a damaged file fails here, not inside diskcache's constructor,
            with contextlib.closing(sqlite3.connect(path)) as probe:  # which leaks its connection
                probe.execute("PRAGMA schema_version").fetchall()
        journal = "wal" if self._mutex is None else "delete"  # WAL's shared memory needs locks
        db = diskcache.Cache(
            str(self.directory), disk=JSONDisk, sqlite_journal_mode=journal,
            sqlite_wal_autocheckpoint=WAL_PAGES, sqlite_journal_size_limit=WAL_PAGES * 4096,
            eviction_policy="none", statistics=False, tag_index=False, timeout=10,
        )
        db.close()  # the connection diskcache opened in __init__, before its local is swapped
        db._local = _ClosingLocal()
        try:
            db.get("n:probe")  # fail now on a file that is not a database
        except BaseException:
            db.close()
            raise
        with contextlib.suppress(sqlite3.OperationalError):  # read-only: lookups still work
            db._con.execute(_SEGMENTS_TABLE)
        return db

    def _open(self, *, rebuild: bool) -> diskcache.Cache | None:
        try:
            with self._serialised():
                return self._connect()
        except _ERRORS as exc:
            if rebuild and self._proven_corrupt():
                logger.warning("cache index %s is corrupt (%s; its integrity check fails); "
                               "moving it aside and rebuilding it", self.directory, exc)
                self._quarantine()
                self._changed_all()
                return self._open(rebuild=False)
            self._reopen_at = time.monotonic() + REOPEN_AFTER
            self._warn_once("open", "cache index %s cannot be used now (%s); it is left as it "
                            "is and fetches go on without the cache", self.directory, exc)
            return None

    def _proven_corrupt(self) -> bool:
        """Whether SQLite itself says the database file is damaged: a read-only
        ``quick_check`` that fails, or a file SQLite does not recognise. Errors that say
        nothing about the file (full disk, locks, I/O, permissions) prove nothing."""
        path = self.directory / _DB_FILE
        if not path.is_file():
            return False
        try:
            with contextlib.closing(
                sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)
            ) as probe:
                rows = probe.execute("PRAGMA quick_check").fetchall()
        except sqlite3.OperationalError:
            return False  # locked, unreadable, I/O: not a verdict on the file
        except sqlite3.DatabaseError:
            return True  # not a database, or malformed
        return rows != [("ok",)]

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        """One WARNING per kind of trouble and index; repeats go to DEBUG."""
        level = logging.DEBUG if kind in self._warned else logging.WARNING
        self._warned.add(kind)
        logger.log(level, message, *args)

    def _reopen(self) -> diskcache.Cache | None:
        """An index that could not be opened is tried again now and then (space may be back)."""
        if time.monotonic() < self._reopen_at or not self._lock.acquire(blocking=False):
            return None
        try:
            if self._db is None and time.monotonic() >= self._reopen_at:
                self._db = self._open(rebuild=True)
            return self._db
        finally:
            self._lock.release()

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
            db = self._reopen()
            if db is None:
                return default
        try:
            with self._serialised():
                return op(db)
        except sqlite3.OperationalError as exc:  # full, locked, read-only, I/O: skipped
            self._warn_once(what, "cache index %s: %s failed (%s); going on without it",
                            self.directory, what, exc)
        except sqlite3.DatabaseError as exc:  # maybe a damaged file: rebuild if proven
            if self._proven_corrupt():
                self._recover(db, what, exc)
            else:
                self._warn_once(what, "cache index %s: %s failed (%s); going on without it",
                                self.directory, what, exc)
        except _ERRORS as exc:  # anything else: this operation is skipped
            self._warn_once(what, "cache index %s: %s failed (%s)", self.directory, what, exc)
        return default

    def _recover(self, db: Any, what: str, exc: BaseException) -> None:
        with self._lock:
            if self._db is not db or db is None:
                return  # another thread already recovered
            logger.warning("cache index %s is corrupt (%s during %s; its integrity check "
                           "fails); moving it aside and rebuilding it", self.directory, exc,
                           what)
            with contextlib.suppress(*_ERRORS):
                db.close()
            self._quarantine()
            self._changed_all()
            self._db = self._open(rebuild=False)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with self._serialised():
                db.close()

    # -- generations --------------------------------------------------------------------------
    def _changed(self, keys: list[str]) -> None:
        if self._generations is not None:
            for key in keys:
                self._generations.changed(key)

    def _changed_all(self) -> None:
        if self._generations is not None:
            self._generations.changed_all()

    # -- entries ------------------------------------------------------------------------------
    def get(self, key: str) -> CacheEntry | None:
        record = self._guard("lookup", lambda db: _get(db, key), None)
        if record is None:
            return None
        try:
            return CacheEntry.from_dict(record)
        except (ValueError, TypeError, AttributeError):
            logger.warning("dropping a malformed cache index record")
            self.delete(key)
            return None

    def commit_many(
        self, items: list[tuple[str, CacheEntry, int]], *, extra_bytes: int = 0,
        placed: list[Placed] | None = None, sealed: frozenset[str] = frozenset(),
    ) -> int | None:
        """Write new entries (key, entry, blob bytes they added, in ``blob_cost``), their last
        use, the segment records of their bodies (``placed``) and the running total in one
        transaction; the new total (None when the index is unavailable). ``sealed``: bodies
        whose seal is recorded already (no ``s:`` record is written for them)."""
        for key, entry, _ in items:
            self._touched[key] = entry.stored_at
        known = sealed | {row[0] for row in placed or ()}  # a segment row holds the seal

        def write(db: diskcache.Cache) -> int:
            records: list[tuple[str, Any]] = []
            for key, entry, _ in items:
                records.append((key, entry.to_dict()))  # last used: stored_at until served
                if entry.seal and entry.sha256 not in known:
                    records.append(("s:" + entry.sha256, entry.seal))
            with db.transact():
                if placed:
                    _place(db, placed)
                _set_many(db, records)
                added = sum(n for *_, n in items) + extra_bytes + ENTRY_COST * len(items)
                total = int(db.get(BYTES_KEY, 0)) + added
                if added:
                    db.set(BYTES_KEY, total)
            return total

        try:
            return self._guard("store", write, None)
        finally:
            self._changed([key for key, _, _ in items])

    def commit(self, key: str, entry: CacheEntry, added_bytes: int) -> int | None:
        """``commit_many`` for one entry."""
        return self.commit_many([(key, entry, added_bytes)])

    def seal_of(self, sha256: str) -> str:
        """The seal recorded for the blob with this sha256 ("" when none is)."""
        seal = self._guard("lookup", lambda db: db.get("s:" + sha256), None)
        if isinstance(seal, str) and seal:
            return seal
        row = self.location(sha256)
        return row[1] if row is not None else ""

    # -- segment records ----------------------------------------------------------------------
    def place(self, rows: list[Placed]) -> bool:
        """Record where these bodies' segment records are (one transaction)."""
        def write(db: diskcache.Cache) -> bool:
            with db.transact():
                _place(db, rows)
            return True

        return self._guard("store", write, False)

    def location(self, sha256: str) -> tuple[Location, str] | None:
        """Where the segment record of this body is, and its seal; None when it has none."""
        def find(db: diskcache.Cache) -> tuple[Location, str] | None:
            row = db._con.execute(
                "SELECT segment, offset, length, seal FROM Segments WHERE sha256 = ?",
                (sha256,)).fetchone()
            return None if row is None else (Location(row[0], row[1], row[2]), row[3])

        return self._guard("lookup", find, None)

    def located(self, shas: list[str]) -> set[str]:
        """Which of these bodies have a segment record (one query for a whole group)."""
        def find(db: diskcache.Cache) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(shas), 500):
                part = shas[start:start + 500]
                found.update(sha for (sha,) in db._con.execute(
                    f"SELECT sha256 FROM Segments WHERE sha256 IN ({', '.join('?' * len(part))})",
                    part))
            return found

        return self._guard("lookup", find, set()) if shas else set()

    def locations(self) -> dict[str, tuple[Location, str, float]]:
        """Every segment record the index points at: sha256 → (where, seal, stored at)."""
        def every(db: diskcache.Cache) -> dict[str, tuple[Location, str, float]]:
            rows = db._con.execute(
                "SELECT sha256, segment, offset, length, seal, stored_at FROM Segments")
            return {r[0]: (Location(r[1], r[2], r[3]), r[4], r[5]) for r in rows}

        return self._guard("listing", every, {})

    def unplace(self, sha256: str, where: Location | None = None) -> None:
        """Forget a body's segment record (its bytes are dead from now on); with ``where``,
        only while the index still points there (a newer record of the body stays)."""
        def drop(db: diskcache.Cache) -> None:
            if where is None:
                db._con.execute("DELETE FROM Segments WHERE sha256 = ?", (sha256,))
            else:
                db._con.execute(
                    "DELETE FROM Segments WHERE sha256 = ? AND segment = ? AND offset = ?",
                    (sha256, where.segment, where.offset))

        self._guard("delete", drop, None)

    def move(self, moves: list[tuple[str, Location, Location]]) -> bool:
        """Point bodies at their new records (compaction), each only if the index still
        points at the old one; one transaction."""
        def write(db: diskcache.Cache) -> bool:
            with db.transact():
                db._con.executemany(
                    "UPDATE Segments SET segment = ?, offset = ? "
                    "WHERE sha256 = ? AND segment = ? AND offset = ?",
                    [(new.segment, new.offset, sha, old.segment, old.offset)
                     for sha, old, new in moves])
            return True

        return self._guard("store", write, False)

    def forget_seal(self, sha256: str) -> None:
        self._guard("delete", lambda db: db.delete("s:" + sha256), None)

    def set(self, key: str, entry: CacheEntry) -> bool:
        try:
            return self._guard("store", lambda db: bool(db.set(key, entry.to_dict())), False)
        finally:
            self._changed([key])

    def delete(self, key: str) -> None:
        def drop(db: diskcache.Cache) -> None:
            db.delete(key)
            db.delete("u:" + key)

        try:
            self._guard("delete", drop, None)
        finally:
            self._changed([key])

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
    def set_bytes(self, total: int) -> None:
        self._guard("count", lambda db: db.set(BYTES_KEY, total), None)

    def clear(self) -> None:
        self._touched.clear()
        try:
            self._guard("clear", lambda db: db.clear(), 0)
            self._guard("clear", lambda db: db._con.execute("DELETE FROM Segments"), None)
        finally:
            self._changed_all()

    def raw(self) -> Any:
        """The diskcache object (None when bypassed), for tests and diagnostics."""
        return self._db


def _get(db: diskcache.Cache, key: str) -> Any:
    """``db.get(key)`` for a value kept in the database (every entry: ``_set_many``), as one
    statement on the thread's connection; a value diskcache keeps in a file goes through
    ``get``. (Every miss asks: diskcache's own ``get`` adds ~8 us of Python around it.)"""
    rows = db._con.execute(_GET, (encode_basestring_ascii(key).encode(), time.time())).fetchall()
    if not rows:
        return None
    ((mode, filename, value),) = rows
    if mode != diskcache.core.MODE_RAW or filename is not None:
        return db.get(key)
    return json.loads(value)


def _place(db: diskcache.Cache, rows: list[Placed]) -> None:
    db._con.executemany(
        "INSERT OR REPLACE INTO Segments (sha256, segment, offset, length, seal, stored_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(sha, where.segment, where.offset, where.length, seal, at)
         for sha, where, seal, at in rows])


def _set_many(db: diskcache.Cache, records: list[tuple[str, Any]]) -> None:
    """``db.set(key, value)`` for each record, inside the caller's transaction, as one upsert
    statement: diskcache's ``set`` runs three statements a key (~45 us), this ~8. The rows
    are exactly what ``set`` writes through ``JSONDisk`` for a value kept in the database; a
    value too big for that (diskcache keeps it in a file) goes through ``set``, and a file an
    older value of a key had is removed as ``set`` would."""
    disk = db._disk
    now = time.time()
    rows: list[tuple[Any, ...]] = []
    for key, value in records:
        db_key, raw = disk.put(key)
        data = json.dumps(value).encode()
        if len(data) >= disk.min_file_size:
            db.set(key, value)
        else:
            rows.append((db_key, raw, now, now, diskcache.core.MODE_RAW, sqlite3.Binary(data)))
    if not rows:
        return
    con = db._con
    old: list[str] = []
    for start in range(0, len(rows), 500):
        keys = [row[0] for row in rows[start:start + 500]]
        old += [name for (name,) in con.execute(
            "SELECT filename FROM Cache WHERE filename IS NOT NULL AND key IN "
            f"({', '.join('?' * len(keys))})", keys)]
    con.executemany(_UPSERT, rows)
    for name in old:
        disk.remove(name)
