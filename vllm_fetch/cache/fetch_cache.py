"""``FetchCache``: the on-disk HTTP cache shared by the sync side, the async side and processes.

Layout under ``directory``: ``index/`` (diskcache: URL key → entry, and where each small body's
segment record is), ``blobs/ab/cdef…`` (immutable bodies named by sha256),
``blobs/segments/*.seg`` (small bodies packed as sealed records, ``segments.py``), ``lock``
(serialises eviction and compaction across processes) and ``generations`` (what voids other
processes' memory copies, ``generation_file``).
HTTP decisions live in ``core.cache_policy``; this class only stores, reads and evicts.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ..config import env_flag, env_size, env_str, parse_size
from ..core.body import is_sha256
from ..core.cache_policy import CacheEntry, LookupDecision, cache_key, on_lookup
from ..core.filesystems import shared_filesystem
from ..core.generations import Stamp
from ..core.results import Body
from ..core.seal import known as known_seal
from ..core.tenancy import credential_material, policy_headers
from ..filesystems import fs_type, warn_if_shared
from .blobs import BlobStore
from .costs import INDEX_BASE, blob_cost
from .generation_file import GenerationFile
from .housekeeping import PruneReport, VerifyReport, prune, verify
from .index import Index
from .memory_tier import DEFAULT_MEMORY_SIZE, Held, MemoryTier
from .seal import seal_file
from .tenants import TenantKeys
from .writer import StoreJob, StoreWriter, store_succeeded, warn_store_failure

logger = logging.getLogger("vllm_fetch.cache")

DEFAULT_SIZE_LIMIT = 10 * 10**9  # 10 GB
#: Past the limit, evict down to this fraction of it.
EVICT_TO = 0.9
#: Lookups whose body was not read yet, remembered for the memory tier (bounded).
MAX_TICKETS = 1024


def default_cache_dir() -> Path:
    """``$VLLM_FETCH_CACHE_DIR``, else the platform's user cache dir + ``vllm_fetch``."""
    env = env_str("VLLM_FETCH_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("vllm_fetch"))


@dataclass(frozen=True)
class CacheInfo:
    """Totals for ``vllm-fetch cache info``."""

    directory: Path
    entries: int
    blobs: int
    bytes: int
    size_limit: int
    #: bodies held by reference to a published file on another filesystem (no bytes here)
    references: int = 0


@dataclass(frozen=True)
class CachedItem:
    """One index entry for ``vllm-fetch cache ls``. ``url`` is redacted (no query, no userinfo)."""

    url: str
    size: int
    sha256: str
    stored_at: float
    last_used: float
    etag: str | None
    #: how the body is held: ``copy``, ``shared`` (a hard link to the downloaded file),
    #: ``reference`` (the downloaded file, on another filesystem) or ``missing``
    stored_as: str = "copy"


@dataclass(slots=True)
class FreshVerdict:
    """A fresh verdict the memory tier's fast path remembers: the held copy it was made for,
    the request fields it was made with, the instant the entry turns stale, and the last
    answer served from it (reused while its ``Age`` and URL are the same: results are
    immutable)."""

    held: Held
    fields: dict[str, str]
    until: float
    served: Body | None = None


class FetchCache:
    """A content-addressed HTTP cache on disk; see the README's "Cache" section.

    ``size_limit`` (bytes; default ``$VLLM_FETCH_CACHE_SIZE`` or 10 GB) bounds what the cache
    occupies: bodies in whole blocks plus each index entry (``cache/costs.py``); least recently
    used entries are evicted past it (SQLite's write-ahead log adds at most ~1 MiB).
    ``allow_private`` lets this cache keep and serve responses to requests with credentials
    (Authorization, Proxy-Authorization, Cookie, X-Api-Key, URL userinfo) or marked
    ``private``: only for a cache that one caller owns. Even then such a response is served
    only to a request with the same credentials. A downloaded file shares its storage with the
    cache (a sealed hard link, or a sealed reference across filesystems: no second copy; an
    edited file is a miss, never served). ``share_files=False`` (default
    ``$VLLM_FETCH_SHARE_FILES``, on) stores a copy instead (a reflink where the filesystem has
    them): a cache that must hold the bytes itself, e.g. a recording to commit. ``link_files``
    also hard-links cache hits out to their targets instead of copying them (every such target
    then shares one inode).

    ``memory_size`` (bytes; default ``$VLLM_FETCH_MEMORY_CACHE_SIZE`` or 64 MiB; 0: off)
    bounds this process's memory tier: bodies up to 1 MiB read from this cache (and checked)
    are kept in memory and served from there while fresh, as long as no process changed
    their entry (the ``generations`` file) and their blob file's signature is unchanged
    (``BlobStore.signature``). Off on a filesystem shared between machines.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        size_limit: int | str | None = None,
        allow_private: bool = False,
        link_files: bool = False,
        memory_size: int | str | None = None,
        share_files: bool | None = None,
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        warn_if_shared(self.directory, "cache")
        self.size_limit = _size_limit(size_limit)
        self.allow_private = allow_private
        self.memory = _memory_tier(self.directory, memory_size)
        self._tickets: dict[str, tuple[Stamp, CacheEntry]] = {}
        #: key -> (the held copy, the request fields, fresh until): ``memory_hits``' memo
        self.fresh_verdicts: dict[str, FreshVerdict] = {}
        try:  # every process announces its writes, whether or not it holds memory copies
            self._generations: GenerationFile | None = GenerationFile(
                self.directory, on_replaced=self._drop_memory)
        except (OSError, ValueError) as exc:
            self._generations = None
            if self.memory is not None:
                logger.warning("cache generation file in %s is unusable (%s); no memory tier",
                               self.directory, exc)
                self.memory = None
        self.index = Index(self.directory / "index", self._generations)
        if share_files is None:
            share_files = env_flag("VLLM_FETCH_SHARE_FILES", default=True)
        self.blobs = BlobStore(self.directory / "blobs", link_files=link_files, index=self.index,
                               share_files=share_files)
        self._tenants = TenantKeys(self.directory)
        self._pending: dict[str, StoreJob] = {}
        self._guard = threading.Lock()
        self._writer = StoreWriter(self.blobs, self.index, guard=self._guard,
                                   is_current=self._is_current, finished=self._finished,
                                   on_total=self._over_limit)
        self._lock_path = self.directory / "lock"
        _open_caches.add(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent writes the bodies it queued; locks start free."""
        self._pending = {}
        self._tickets = {}
        self._guard = threading.Lock()
        self._writer.after_fork(self._guard)
        self.blobs.after_fork()
        if self.memory is not None:
            self.memory.after_fork()
        if self._generations is not None:
            self._generations.after_fork()

    def __repr__(self) -> str:
        return f"FetchCache({str(self.directory)!r}, size_limit={self.size_limit})"

    # -- what the fetch path uses -------------------------------------------------------------
    def key_for(
        self, url: str, request_headers: Mapping[str, str], scope: str = ""
    ) -> tuple[str, Mapping[str, str]]:
        """The key for ``url`` (in the URL policy's ``scope``, and the credentials' own space
        when the request carries any), and the request fields the policy decides on."""
        tenant = self._tenants.tag(credential_material(url, request_headers))
        if tenant:
            scope = f"{scope}\0tenant:{tenant}"
            request_headers = policy_headers(url, request_headers)
        return cache_key(url, scope=scope), request_headers

    def lookup(
        self, url: str, request_headers: Mapping[str, str], *, offline: bool, now: float,
        scope: str = "",
    ) -> tuple[str, LookupDecision]:
        """The key for ``url`` (``key_for``) and the core's verdict on what is stored under
        it."""
        key, request_headers = self.key_for(url, request_headers, scope)
        job = self._pending.get(key)
        if job is not None:
            stored: CacheEntry | None = job.entry
        elif self.memory is not None and self._generations is not None:
            stamp = self._generations.stamp(key)  # before the index is read: see generations
            stored = self.index.get(key)
            if stored is not None and self.memory.fits(stored.size):
                if len(self._tickets) >= MAX_TICKETS:
                    self._tickets.clear()
                self._tickets[key] = (stamp, stored)
        else:
            stored = self.index.get(key)
        decision = on_lookup(stored, request_headers, now, offline=offline,
                             caller_private_ok=self.allow_private)
        return key, decision

    def read(self, key: str, entry: CacheEntry, now: float) -> bytes | None:
        """The stored body, or None (and the entry dropped) when its blob is gone or damaged.
        A body read from disk as the lookup found it joins the memory tier."""
        job = self._pending.get(key)
        if job is not None and job.entry.sha256 == entry.sha256:
            return job.content  # queued for the writer: served from memory
        ticket = self._tickets.pop(key, None)
        signature = None
        if ticket is not None and ticket[1] is entry:
            signature = self.blobs.signature(entry.sha256)  # before the bytes are read
        data = self.blobs.read(entry.sha256, entry.size, entry.seal)
        if data is None:
            self._lost(key, entry)
            return None
        self.index.touch(key, now)
        if signature is not None and ticket is not None and self.memory is not None:
            self.memory.put(key, Held(entry, data, ticket[0], signature))
        return data

    def held(self, key: str) -> Held | None:
        """The memory copy of ``key``'s entry and body while it is what the disk holds: no
        process changed the entry since it was read (its generation stamp), nothing queued
        replaces it, and its blob file's signature is unchanged. Otherwise None (and a
        copy that is no longer valid is dropped)."""
        memory, generations = self.memory, self._generations
        if memory is None or generations is None:
            return None
        held = memory.get(key)
        if held is None:
            return None
        if (key in self._pending or not generations.still_valid(held.stamp)
                or self.blobs.signature(held.entry.sha256) != held.signature):
            memory.drop(key, held)
            return None
        return held

    def used(self, key: str, now: float) -> None:
        """Record that ``key`` was served (from memory): eviction keeps what is used."""
        self.index.touch(key, now)

    def _drop_memory(self, key: str | None = None) -> None:
        if self.memory is not None:
            if key is None:
                self.memory.clear()
            else:
                self.memory.drop(key)

    def copy_to(self, key: str, entry: CacheEntry, target: Path, now: float) -> bool:
        """Publish the stored body at ``target`` (crash-safe); False when the blob is gone."""
        if key in self._pending:
            self.flush()  # a body still queued for the writer has no blob yet
        if not self.blobs.copy_to(entry.sha256, target, entry.seal):
            self._lost(key, entry)
            return False
        self.index.touch(key, now)
        return True

    def _lost(self, key: str, entry: CacheEntry) -> None:
        logger.warning("cache blob for %s is missing or damaged; dropping the entry", entry.url)
        self.invalidate(key)
        if not self.blobs.exists(entry.sha256):
            self.index.forget_seal(entry.sha256)

    def submit_bytes(
        self, key: str, entry: CacheEntry, content: bytes, sha256: str | None
    ) -> Future[int | None] | None:
        """Queue a complete body and its entry for the background writer and return at once
        (the body is served from memory until written). Returns the job's future when the
        caller should wait for it (too many bytes queued), else None."""
        job, wait = self._submit(key, entry, content, sha256)
        return job.done if job is not None and wait else None

    def _submit(
        self, key: str, entry: CacheEntry, content: bytes, sha256: str | None
    ) -> tuple[StoreJob | None, bool]:
        if len(content) > self.size_limit:
            return None, False
        job = StoreJob(key, entry, content, sha256)  # hashed by the writer when sha256 is None
        with self._guard:
            self._pending[key] = job
        self._drop_memory(key)
        return job, self._writer.submit(job)

    def store_bytes(self, key: str, entry: CacheEntry, content: bytes, sha256: str | None) -> bool:
        """Store a complete body and its entry and wait until it is committed; False (and a
        WARNING, never an error) when it could not be."""
        job, _ = self._submit(key, entry, content, sha256)
        if job is None:
            return False
        self._writer.flush()  # written now, not after the writer's linger
        return job.committed  # a failure was logged by the writer

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued body is written and committed."""
        if self._pending:
            self._writer.flush(timeout)

    def _is_current(self, job: StoreJob) -> bool:
        return self._pending.get(job.key) is job

    def _finished(self, job: StoreJob) -> None:
        with self._guard:
            if self._pending.get(job.key) is job:
                del self._pending[job.key]

    def _over_limit(self, total: int) -> None:
        # Runs on the writer thread too: never flush (wait for the writer) from here. Evicting
        # down to a low-water mark makes the full scan rare, not one per store at capacity.
        if total + INDEX_BASE <= self.size_limit:  # the running total leaves the base out
            return
        try:
            prune(self.index, self.blobs, self._lock_path,
                  max_size=int(self.size_limit * EVICT_TO), older_than=None, now=time.time())
        except OSError as exc:  # eviction trouble must not fail the fetch that triggered it
            logger.warning("cache eviction in %s failed: %s", self.directory, exc)

    def store_file(self, key: str, entry: CacheEntry, path: Path, sha256: str, size: int) -> bool:
        """Store a published, already hashed file and its entry (never re-downloaded)."""
        if size > self.size_limit:
            return False
        try:
            # computed while the body streamed, else read once (the bytes just verified by
            # sha256, in the page cache)
            seal = known_seal(sha256) or seal_file(path)
            digest, created = self.blobs.put_file(path, sha256, size)
        except OSError as exc:
            warn_store_failure(self.blobs.root, entry.url, exc)
            return False
        store_succeeded(self.blobs.root)
        with self._guard:
            self._pending.pop(key, None)
            self._drop_memory(key)
            total = self.index.commit(key, entry.with_body(digest, size, seal),
                                      blob_cost(size) if created else 0)
        if total is not None:
            self._over_limit(total)
        return total is not None

    def refresh(self, key: str, entry: CacheEntry) -> None:
        """Write updated metadata (after a 304) for an entry whose blob is unchanged."""
        if key in self._pending:
            self.flush()  # its queued store must not land after (and over) this update
        self._drop_memory(key)
        self.index.set(key, entry)

    def invalidate(self, key: str) -> None:
        """Forget the entry for ``key`` (its blob goes at the next prune if unreferenced)."""
        with self._guard:
            self._pending.pop(key, None)
            self._drop_memory(key)
            self.index.delete(key)

    def blob_size(self, sha256: str) -> int | None:
        """The size of the blob with this sha256, or None when there is none."""
        sha256 = sha256.lower()
        if not is_sha256(sha256):
            return None
        return self.blobs.size(sha256)

    def copy_blob_to(self, sha256: str, target: Path) -> bool:
        """Publish the blob with this sha256 at ``target``, whatever URL it came from; checked
        against its recorded seal (or its sha256) first. False when gone or damaged."""
        sha256 = sha256.lower()
        if self.blobs.copy_to(sha256, target, self.index.seal_of(sha256)):
            return True
        if not self.blobs.present(sha256):
            self.index.forget_seal(sha256)
        return False

    # -- housekeeping (the ``vllm-fetch cache`` commands) ------------------------------------------
    def info(self) -> CacheInfo:
        """How many entries and blobs, how many blob bytes, where, and the limit."""
        self.flush()
        entries = sum(1 for _ in self.index.items())
        blobs = list(self.blobs.iter_blobs())
        return CacheInfo(self.directory, entries, len(blobs), sum(b.held for b in blobs),
                         self.size_limit, sum(1 for b in blobs if not b.held and b.size))

    def entries(self) -> list[CachedItem]:
        """Every entry, most recently used first."""
        self.flush()
        items = [CachedItem(e.url, e.size, e.sha256, e.stored_at, used, e.etag,
                            self.blobs.kind(e.sha256))
                 for _, e, used in self.index.items()]
        return sorted(items, key=lambda item: item.last_used, reverse=True)

    def verify(self, remove: bool = True) -> VerifyReport:
        """Re-hash every blob; corrupt ones (and their entries) are reported and, with
        ``remove``, deleted so they are fetched again."""
        self.flush()
        return verify(self.index, self.blobs, self._lock_path, remove=remove)

    def prune(
        self, max_size: int | str | None = None, older_than: float | dt.timedelta | None = None
    ) -> PruneReport:
        """Remove blobs unused for ``older_than`` (seconds or a timedelta), then least recently
        used ones until at most ``max_size`` bytes remain; unreferenced blobs always go."""
        self.flush()
        limit = _size_limit(max_size) if max_size is not None else None
        age = older_than.total_seconds() if isinstance(older_than, dt.timedelta) else older_than
        return prune(self.index, self.blobs, self._lock_path, max_size=limit, older_than=age,
                     now=time.time())

    def clear(self) -> None:
        """Remove every entry and blob."""
        self.flush()
        self._drop_memory()
        self.index.clear()
        self.blobs.clear()
        self.index.set_bytes(0)

    def close(self) -> None:
        """Finish queued stores and close the index's database connections."""
        self._writer.close()
        if self.blobs.segments is not None:
            self.blobs.segments.close()
        self.index.close()


_open_caches: weakref.WeakSet[FetchCache] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for cache in list(_open_caches):
        cache._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _memory_tier(directory: Path, size: int | str | None) -> MemoryTier | None:
    """The memory tier for a cache in ``directory``: None when its size is 0, or when the
    directory is on a filesystem other machines write (their writes reach no mapping here)."""
    limit = _size_limit(size, "VLLM_FETCH_MEMORY_CACHE_SIZE", DEFAULT_MEMORY_SIZE)
    if limit == 0:
        return None
    if shared_filesystem(fs_type(directory)) is not None:
        logger.info("cache %s is on a shared filesystem: no memory tier", directory)
        return None
    return MemoryTier(limit)


def _size_limit(
    value: int | str | None, variable: str = "VLLM_FETCH_CACHE_SIZE",
    default: int = DEFAULT_SIZE_LIMIT,
) -> int:
    if value is None:
        return env_size(variable, default)
    if isinstance(value, str):
        return parse_size(value)
    if value < 0:
        raise ValueError("size_limit must be >= 0")
    return value
