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
"""

from __future__ import annotations

import hashlib
import queue
import threading

from . import seal

#: Chunks are handed to the helper thread in batches of this many bytes (fewer wake-ups).
BATCH = 1 << 20
#: Batches queued at most (the memory bound: about 8 MiB).
MAX_PENDING = 8
#: The helper thread exits after this many seconds without a chunk (the next one restarts it).
IDLE_EXIT = 1.0


class OverlappedSha256:
    """sha256 + xxh3-128 of the bytes given to :meth:`update`, hashed on a helper thread."""

    name = "sha256"
    digest_size = 32
    block_size = 64

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._seal = seal.new_sealer()
        self._queue: queue.Queue[list[bytes]] = queue.Queue(MAX_PENDING)
        self._batch: list[bytes] = []
        self._batched = 0
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        chunk = data if isinstance(data, bytes) else bytes(data)  # a reused buffer is copied
        if not chunk:
            return
        self._batch.append(chunk)
        self._batched += len(chunk)
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
                for chunk in batch:
                    self._sha.update(chunk)
                    self._seal.update(chunk)
            finally:
                self._queue.task_done()

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
