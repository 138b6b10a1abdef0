"""A sha256 of a stream computed on a helper thread, overlapped with the network.

``OverlappedSha256`` looks like a ``hashlib`` sha256 to its callers (``update``,
``hexdigest``, ``digest``, ``copy``), but ``update`` only queues the chunk: a helper thread
hashes it (hashlib releases the GIL on large buffers), so a single-stream download costs the
receiving thread — or the event loop — no hashing time. The same thread computes the body's
xxh3-128 seal (``core.seal``) and remembers it under the sha256, so the cache can seal a file it
shares with its target without reading it again. Chunks go over in batches of ``BATCH`` bytes
(one wake-up per MiB, not per chunk), at most ``MAX_PENDING`` batches wait (the memory bound); a
reader of the digest waits for the queue to drain. The helper thread exits when idle, so an
abandoned hasher leaves no thread behind.

A reader that fills buffers itself (the sync download runner) reads into buffers :meth:`lend`
hands out, from a small ring: a view of one given to ``update`` is queued as it is, no copy,
and the ring slot is lent again only once the helper has hashed it. Any other reused buffer is
copied, since its owner may overwrite it before the helper gets to it.
"""

from __future__ import annotations

import hashlib
import queue
import threading

import xxhash

from . import seal

#: Chunks are handed to the helper thread in batches of this many bytes (fewer wake-ups).
BATCH = 1 << 20
#: Batches queued at most (the memory bound: about 8 MiB).
MAX_PENDING = 8
#: The helper thread exits after this many seconds without a chunk (the next one restarts it).
IDLE_EXIT = 1.0
#: The ring of lent buffers grows to about this many bytes (at least ``MIN_LENT`` buffers).
LEND_BYTES = 4 << 20
MIN_LENT = 4

#: A queued chunk, and the ring slot it lies in (-1: its own bytes object).
_Item = tuple[bytes | memoryview, int]


class OverlappedSha256:
    """sha256 + xxh3-128 of the bytes given to :meth:`update`, hashed on a helper thread."""

    name = "sha256"
    digest_size = 32
    block_size = 64

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._seal = seal.new_sealer()
        self._queue: queue.Queue[list[_Item]] = queue.Queue(MAX_PENDING)
        self._batch: list[_Item] = []
        self._batched = 0
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._ring: list[bytearray] = []
        self._slots: dict[int, int] = {}  # id() of a ring buffer -> its slot
        self._busy: dict[int, int] = {}  # slot -> chunks of it queued and not yet hashed
        self._ring_bytes = 0
        self._next = 0
        self._idle = threading.Condition()

    @classmethod
    def continuing(cls, sha: hashlib._Hash, sealer: xxhash.xxh3_128) -> OverlappedSha256:
        """A hasher that goes on from bytes already hashed (a resumed partial's prefix)."""
        hasher = cls()
        hasher._sha, hasher._seal = sha, sealer
        return hasher

    def lend(self, size: int) -> bytearray:
        """A buffer (``size`` bytes, or a ring buffer of another size) to read the next chunk
        into; a view of it given to :meth:`update` is hashed without a copy. Waits while the
        helper still has to hash what the slot held last."""
        ring = self._ring
        if len(ring) < MIN_LENT or self._ring_bytes + size <= LEND_BYTES:
            buffer = bytearray(size)
            self._slots[id(buffer)] = len(ring)
            ring.append(buffer)
            self._ring_bytes += size
            return buffer
        slot, self._next = self._next, (self._next + 1) % len(ring)
        if slot in self._busy:
            self._hand_over()  # the slot may be in the batch not yet sent: send it first
            with self._idle:
                self._idle.wait_for(lambda: slot not in self._busy)
        return ring[slot]

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        item: _Item
        if isinstance(data, memoryview) and (slot := self._slots.get(id(data.obj), -1)) >= 0:
            with self._idle:
                self._busy[slot] = self._busy.get(slot, 0) + 1
            item = (data, slot)
        else:  # a reused buffer of someone else's is copied
            item = (data if isinstance(data, bytes) else bytes(data), -1)
        self._batch.append(item)
        self._batched += len(data)
        if self._batched >= BATCH:
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batched = self._batch, [], 0
        with self._lock:
            self._queue.put(batch)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, daemon=True,
                                                name="vllm_fetch-sha256")
                self._worker.start()

    def _run(self) -> None:
        while True:
            try:
                batch = self._queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._worker = None
                        return
                continue
            try:
                for chunk, slot in batch:
                    self._sha.update(chunk)
                    self._seal.update(chunk)
                    if slot >= 0:
                        self._release(slot)
            finally:
                self._queue.task_done()

    def _release(self, slot: int) -> None:
        with self._idle:
            left = self._busy[slot] - 1
            if left:
                self._busy[slot] = left
            else:
                del self._busy[slot]
                self._idle.notify_all()

    def _settled(self) -> None:
        self._hand_over()
        self._queue.join()

    def hexdigest(self) -> str:
        self._settled()
        digest = self._sha.hexdigest()
        seal.remember(digest, self._seal.hexdigest())
        return digest

    def digest(self) -> bytes:
        self._settled()
        return self._sha.digest()

    def copy(self) -> OverlappedSha256:
        self._settled()
        twin = OverlappedSha256()
        twin._sha, twin._seal = self._sha.copy(), self._seal.copy()
        return twin
