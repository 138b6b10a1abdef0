"""Write-behind with group commit for stored bodies.

A fetched body is queued here and the call returns at once; until the job is committed the
cache serves the body from memory (``FetchCache`` keeps the pending jobs by key), so a second
fetch is still not a second transfer. One background thread per cache takes whatever is queued
as one group — small bodies appended to its segment file and synced once (``segments.py``),
larger ones written, fsynced together and linked — and commits their entries (with where the
small ones are) in one index transaction: one durable commit for many bodies, and fetch latency
never waits for a disk flush.

The writer stays out of the way of a burst of fetches (see :func:`take_burst`): it starts once
stores pause for ``LINGER``, or ``MAX_LINGER`` after the first one, or when ``LINGER_BYTES`` are
queued, or at once for a flush. Its Python work (and each GIL hand-off after its hashing and
file syscalls) would otherwise interleave with the event loop that is still fetching; for the
same reason a store does not wake it: it pauses, then takes whatever was queued meanwhile.

Queued bytes are bounded (``MAX_PENDING_BYTES``): past that a caller waits for its own job.
Queued jobs are flushed at interpreter exit, so another process sees them afterwards.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from ..core.cache_policy import CacheEntry
from ..core.segment_record import SEGMENT_BODY_MAX
from .blobs import BlobStore
from .costs import blob_cost
from .index import Index, Placed
from .seal import seal_of

logger = logging.getLogger("vllm_fetch.cache")

#: Most stores committed as one group.
MAX_GROUP = 128
#: Seconds without a new store before the writer starts on what is queued...
LINGER = 0.02
#: ...but never later than this after the first of them was queued...
MAX_LINGER = 1.0
#: ...nor once this many bytes are queued.
LINGER_BYTES = 64 * 1024 * 1024
#: Bytes queued before callers start waiting for their own store.
MAX_PENDING_BYTES = 256 * 1024 * 1024


@dataclass(eq=False, slots=True)
class StoreJob:
    """A body queued for the writer. Its digest and seal are computed when first needed: by
    the writer thread normally (hashlib releases the GIL there, so the event loop that fetched
    the body never spends ~50 us per 100 KB on it), or by a lookup that meets the job first."""

    key: str
    template: CacheEntry  # the entry to store; its sha256 and size are filled in by ``entry``
    content: bytes
    sha256: str | None = None  # the digest, when the caller already has it
    #: Settled with the blob total after the commit, for a caller that must wait for its job
    #: (made by ``submit`` only then: a Future is a dozen objects for the GC to track).
    done: Future[int | None] | None = None
    committed: bool = False  # the entry is in the index
    _entry: CacheEntry | None = field(default=None, repr=False)

    @property
    def entry(self) -> CacheEntry:
        """The complete entry (sha256 and size filled in). Two threads racing here compute the
        same value; either result may be kept."""
        entry = self._entry
        if entry is None:
            digest = self.sha256 or hashlib.sha256(self.content).hexdigest()
            entry = self._entry = self.template.with_body(digest, len(self.content),
                                                          seal_of(self.content))
        return entry


_Item = StoreJob | threading.Event | None  # a job, a flush barrier, or "stop"
_live: weakref.WeakSet[StoreWriter] = weakref.WeakSet()
#: (blob directory, errno) of the store failures already told at WARNING
_store_failures_told: set[tuple[str, int | None]] = set()


def warn_store_failure(directory: object, url: str, exc: OSError) -> None:
    """A body that could not be cached: one WARNING per cache and kind of failure (a read-only
    or full cache fails every store the same way), the repeats at DEBUG until a store into
    that cache succeeds again (``store_succeeded``)."""
    kind = (str(directory), exc.errno)
    if kind in _store_failures_told:
        logger.debug("cannot cache %s: %s", url, exc)
        return
    _store_failures_told.add(kind)
    logger.warning("cannot cache %s: %s (the same failure again is logged at DEBUG)", url, exc)


def store_succeeded(directory: object) -> None:
    """A store into ``directory`` worked: its next failure is news again."""
    if _store_failures_told:
        where = str(directory)
        _store_failures_told.difference_update(
            {kind for kind in _store_failures_told if kind[0] == where})


@atexit.register
def _flush_all() -> None:
    for writer in list(_live):
        writer.flush(timeout=30.0)


def _flush_at_child_exit(writer: StoreWriter) -> None:
    """A multiprocessing child ends with ``os._exit``, which skips atexit: have
    multiprocessing's own exit hook flush the writer there."""
    mp = sys.modules.get("multiprocessing")
    if mp is None or mp.parent_process() is None:
        return
    from multiprocessing.util import Finalize

    Finalize(None, _flush_if_alive, args=(weakref.ref(writer),), exitpriority=10)


def _flush_if_alive(ref: weakref.ref[StoreWriter]) -> None:
    writer = ref()
    if writer is not None:
        writer.flush(timeout=30.0)


class StoreWriter:
    """The background writer. Restarts itself in a forked child (threads do not survive fork).

    ``is_current(job)`` tells whether a job is still the latest for its key (an invalidation
    or a newer store drops it); ``finished(job)`` is called once it is committed or failed.
    """

    def __init__(self, blobs: BlobStore, index: Index, *, guard: threading.Lock,
                 is_current: Callable[[StoreJob], bool],
                 finished: Callable[[StoreJob], None],
                 on_total: Callable[[int], None]) -> None:
        self._blobs = blobs
        self._index = index
        self._guard = guard
        self._is_current = is_current
        self._finished = finished
        self._on_total = on_total
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        #: set when the writer must not linger (a flush, a full backlog, closing)
        self._urgent = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.pending_bytes = 0

    def submit(self, job: StoreJob) -> bool:
        """Queue a job; True when the caller should wait for it (too much is queued)."""
        with self._lock:
            self._ensure_thread()
            self.pending_bytes += len(job.content)
            wait = self.pending_bytes > MAX_PENDING_BYTES
            if wait:
                job.done = Future()
            self._queue.put(job)
            if wait or self.pending_bytes >= LINGER_BYTES:
                self._urgent.set()
            return wait

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        self._queue = queue.SimpleQueue()
        self._urgent = threading.Event()
        self.pending_bytes = 0
        self._thread = threading.Thread(target=self._run, args=(self._queue, self._urgent),
                                        name="vllm-fetch-cache-writer", daemon=True)
        self._pid = os.getpid()
        self._thread.start()
        _live.add(self)
        _flush_at_child_exit(self)

    def after_fork(self, guard: threading.Lock) -> None:
        """In a forked child: no thread, nothing queued, and locks no parent thread holds."""
        self._guard = guard
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        self._urgent = threading.Event()
        self._thread = None
        self.pending_bytes = 0

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is committed."""
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                return
            barrier = threading.Event()
            self._queue.put(barrier)
            self._urgent.set()
        barrier.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None or self._pid != os.getpid():
                return
            self._queue.put(None)
            self._urgent.set()
        _live.discard(self)
        thread.join(timeout)

    def _run(self, items: queue.SimpleQueue[_Item], urgent: threading.Event) -> None:
        while True:
            urgent.clear()  # whatever set it is in the queue already, taken below
            jobs, barrier, stop = take_burst(items, pause=urgent.wait)
            for start in range(0, len(jobs), MAX_GROUP):
                self._commit(jobs[start:start + MAX_GROUP])
            if barrier is not None:
                barrier.set()
            if stop:
                return

    def _commit(self, group: list[StoreJob]) -> None:
        if not group:
            return
        try:
            self._write(group)
        except BaseException as exc:  # never leave a caller waiting, never let the thread die
            logger.warning("cache writer failed: %s", exc)
            error = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
            for job in group:
                if job.done is not None and not job.done.done():
                    job.done.set_exception(error)
        finally:
            with self._lock:
                self.pending_bytes -= sum(len(job.content) for job in group)
            for job in group:
                self._finished(job)

    def _write(self, group: list[StoreJob]) -> None:
        outcomes, placed = self._blobs.put_group(
            [(job.content, job.entry.sha256, job.entry.seal) for job in group])
        try:
            total = self._record(group, outcomes, placed)
        finally:
            self._blobs.settle(placed)
        if total is not None:
            self._on_total(total)  # may evict and compact: after the group is settled

    def _record(self, group: list[StoreJob], outcomes: list[tuple[str, bool] | OSError],
                placed: list[Placed]) -> int | None:
        written: list[tuple[StoreJob, int]] = []
        for job, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, OSError):
                warn_store_failure(self._blobs.root, job.entry.url, outcome)
                if job.done is not None:
                    job.done.set_exception(outcome)
            else:
                written.append((job, blob_cost(job.entry.size) if outcome[1] else 0))
        # A job superseded meanwhile (invalidated, or a newer store for its key) only adds its
        # blob; its entry is not written. ``guard`` keeps invalidations out of this window.
        # The segment records of the group are recorded in the same transaction.
        with self._guard:
            current = [(job, added, self._is_current(job)) for job, added in written]
            total = self._index.commit_many(
                [(job.key, job.entry, added) for job, added, ok in current if ok],
                extra_bytes=sum(added for _, added, ok in current if not ok), placed=placed,
                sealed=frozenset(job.entry.sha256 for job, added, _ in current
                                 if not added and job.entry.size <= SEGMENT_BODY_MAX))
        if total is not None and self._blobs.segments is not None:
            self._blobs.segments.placed(placed)
        if written and total is not None:
            store_succeeded(self._blobs.root)
        for job, _ in written:
            job.committed = total is not None
            if job.done is not None:
                job.done.set_result(total)
        return total


class ItemQueue(Protocol):
    """What :func:`take_burst` needs of the queue (``queue.SimpleQueue`` has it)."""

    def get(self, block: bool = True, timeout: float | None = None) -> _Item: ...


def take_burst(
    items: ItemQueue, *, clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], object] = time.sleep,
) -> tuple[list[StoreJob], threading.Event | None, bool]:
    """Wait for a first item, then keep taking jobs while stores keep coming. Stops when none
    arrived during a ``LINGER`` pause, ``MAX_LINGER`` after the first, once ``LINGER_BYTES``
    are taken, or at a flush barrier or the stop signal (the queue is FIFO: whatever was
    queued before either has been taken). Returns (jobs, the flush barrier taken, stop).

    Between pauses it takes what is queued without waiting, so a store does not wake this
    thread (each wake-up is a GIL hand-off the fetching event loop pays for); ``pause`` is
    cut short by whoever needs the writer now (a flush, a caller past the backlog bound)."""
    jobs: list[StoreJob] = []
    item = items.get()
    give_up = clock() + MAX_LINGER
    queued = 0
    while True:
        while True:  # everything queued by now
            if item is None:
                return jobs, None, True
            if isinstance(item, threading.Event):
                return jobs, item, False
            jobs.append(item)
            queued += len(item.content)
            if queued >= LINGER_BYTES:
                return jobs, None, False
            try:
                item = items.get(block=False)
            except queue.Empty:
                break
        wait = min(LINGER, give_up - clock())
        if wait <= 0:
            return jobs, None, False
        pause(wait)
        try:
            item = items.get(block=False)
        except queue.Empty:
            return jobs, None, False  # none arrived for a linger: the burst paused
