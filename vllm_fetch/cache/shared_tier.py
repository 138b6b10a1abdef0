"""A read-only shared cache tier (``VLLM_FETCH_SHARED_CACHE=DIR``): a cache another machine filled.

``DIR`` is a vllm_fetch cache directory, e.g. on a shared mount. Its index is read with SQLite
opened ``mode=ro&immutable=1`` (no write, no lock, no ``-wal``/``-shm`` file is ever created
there: a plain read-only open would make both), records decoded as diskcache's ``JSONDisk``
wrote them (never a pickle: the index comes from another machine). Bodies are read through a
read-only ``BlobStore``, checked against the entry's seal (its sha256 when it has none); a
damaged body is reported and not used, never repaired or removed. Which calls ask the tier
and which entries serve is decided in ``core.shared_tier``; the cache flows run it.

Entries still in the filling process's write-ahead log (it is running and has not checkpointed)
are not seen: share a store once it is filled (``vllm-fetch prefetch`` / ``warm`` exited).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import diskcache

from ..config import env_str
from ..core.body import is_sha256
from ..core.cache_policy import CacheEntry
from ..core.segment_record import HEADER_SIZE, SEGMENT_BODY_MAX, accepts, parse_header
from ..files import publish_bytes
from .blobs import BlobStore
from .index import JSONDisk, _ClosingLocal

logger = logging.getLogger("vllm_fetch.cache")

_DB_FILE = "cache.db"
_QUERY = ("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ? "
          "AND (expire_time IS NULL OR expire_time > ?)")
_SEGMENT_QUERY = "SELECT segment, offset, length, seal FROM Segments WHERE sha256 = ?"
#: A segment file's name as the store makes them (never a path: the index is another machine's)
_SEGMENT_NAME = re.compile(r"[A-Za-z0-9_.-]+\.seg")
#: The record modes JSONDisk writes: in the row, or in a file beside the database.
_MODES = (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY)


class SharedTier:
    """Another machine's cache under ``root`` (``index/``, ``blobs/``), read and never written."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.blobs = BlobStore(self.root / "blobs", read_only=True)
        self._index = self.root / "index"
        self._disk = JSONDisk(str(self._index))
        self._local = _ClosingLocal()  # one connection per thread (its first query costs ~1 ms)
        self._warned = False
        self._damaged: set[str] = set()  # bodies found damaged, told once each
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> SharedTier | None:
        configured = env_str("VLLM_FETCH_SHARED_CACHE")
        return cls(Path(configured).expanduser()) if configured else None

    def __repr__(self) -> str:
        return f"SharedTier({str(self.root)!r})"

    def _connection(self) -> sqlite3.Connection:
        """This thread's read-only connection to the index, opened again when the file was
        replaced or changed (immutable: SQLite itself would not notice), and in a forked child
        (a connection is never used across fork)."""
        path = self._index / _DB_FILE
        st = os.stat(path)
        stamp = (os.getpid(), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        local = self._local
        con: sqlite3.Connection | None = getattr(local, "con", None)
        if con is not None and getattr(local, "stamp", None) == stamp:
            return con
        if con is not None:
            local.con = None
            con.close()
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
        local.stamp, local.con = stamp, con
        return con

    def _record(self, key: str) -> Any:
        """The index record under ``key``, or None (none, or the index cannot be read)."""
        try:
            db_key, raw = self._disk.put(key)
            rows = self._connection().execute(_QUERY, (db_key, raw, time.time())).fetchall()
            if not rows:
                return None
            mode, filename, value = rows[0]
            if mode not in _MODES or (filename and (os.path.isabs(filename)
                                                    or ".." in Path(filename).parts)):
                return None
            return self._disk.fetch(mode, filename, value, False)
        except (sqlite3.Error, OSError, ValueError, TypeError) as exc:
            self._trouble(exc)
            return None

    def _trouble(self, exc: BaseException) -> None:
        """One WARNING per tier when its index cannot be read (a miss each time), then DEBUG."""
        with self._lock:
            first, self._warned = not self._warned, True
        logger.log(logging.WARNING if first else logging.DEBUG,
                   "shared cache index %s cannot be read (%s): lookups there are misses",
                   self._index, exc)

    def entry(self, key: str) -> CacheEntry | None:
        """The entry stored under the cache key ``key``, or None."""
        record = self._record(key)
        if not isinstance(record, dict):
            return None
        try:
            entry = CacheEntry.from_dict(record)
        except (ValueError, TypeError, AttributeError):
            return None
        return entry if is_sha256(entry.sha256) else None

    def seal_of(self, sha256: str) -> str:
        """The seal recorded for the blob named ``sha256`` ("" when none is: then its bytes
        are checked against the sha256 itself)."""
        seal = self._record("s:" + sha256)
        if isinstance(seal, str) and seal:
            return seal
        row = self._segment_row(sha256)  # a body packed in a segment: its row holds the seal
        return str(row[3]) if row is not None and row[3] else ""

    def _segment_row(self, sha256: str) -> tuple[Any, ...] | None:
        """The tier's ``Segments`` row of this body (segment, offset, length, seal), or None."""
        try:
            row = self._connection().execute(_SEGMENT_QUERY, (sha256,)).fetchone()
        except (sqlite3.Error, OSError) as exc:  # e.g. a store written before segments existed
            logger.debug("shared cache tier %s: no segment table (%s)", self.root, exc)
            return None
        return tuple(row) if row is not None else None

    def read(self, entry: CacheEntry) -> bytes | None:
        """The entry's body, checked against its seal; None when it is missing or damaged. A
        small body may be packed in one of the tier's segment files (``segments.py``)."""
        if entry.size <= SEGMENT_BODY_MAX:
            packed = self._packed(entry.sha256, entry.size, entry.seal)
            if packed is not None:
                return packed
        return self.blobs.read(entry.sha256, entry.size, entry.seal)

    def _packed(self, sha256: str, size: int, seal: str) -> bytes | None:
        """The body from its segment record there, whole and matching its seals; else None.
        Nothing is dropped: the tier is never written."""
        row = self._segment_row(sha256)
        if row is None or row[2] != size or not _SEGMENT_NAME.fullmatch(str(row[0])):
            return None
        try:
            fd = os.open(self.root / "blobs" / "segments" / row[0], os.O_RDONLY)
        except OSError:
            return None
        try:
            head = os.pread(fd, HEADER_SIZE, row[1])
            body = os.pread(fd, size, row[1] + HEADER_SIZE)
        except OSError:
            return None
        finally:
            os.close(fd)
        if accepts(parse_header(head), body, sha256, size, seal or row[3]):
            return body
        self._tell_damaged("the segment record of", sha256)
        return None

    def _tell_damaged(self, what: str, sha256: str, how: str = "is damaged") -> None:
        """One WARNING per damaged body (a download looks twice: before and under its lock)."""
        if sha256 not in self._damaged:
            self._damaged.add(sha256)
            logger.warning("shared cache tier %s: %s %s %s; not used", self.root, what, sha256,
                           how)

    def blob_size(self, sha256: str) -> int | None:
        """The size of the blob named ``sha256`` there, or None."""
        if not is_sha256(sha256):
            return None
        size = self.blobs.size(sha256)
        if size is None:
            row = self._segment_row(sha256)
            size = int(row[2]) if row is not None else None
        return size

    def copy_to(self, sha256: str, seal: str, target: Path) -> bool:
        """Publish the blob at ``target`` (temp file, fsync, rename) once the copy matches
        ``seal`` ("": the sha256); False when missing or damaged (nothing left at ``target``).
        A ``DiskError`` when the target cannot be written."""
        if self.blobs.copy_to(sha256, target, seal):
            return True
        if self.blobs.path(sha256).exists():  # there, but unreadable or failing its check
            self._tell_damaged("the blob", sha256, "is damaged or cannot be read")
            return False
        row = self._segment_row(sha256)
        packed = self._packed(sha256, int(row[2]), seal) if row is not None else None
        if packed is None:
            return False
        publish_bytes(packed, target)
        return True
