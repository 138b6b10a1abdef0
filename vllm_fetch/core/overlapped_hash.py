"""A sha256 of a stream computed on a helper thread, overlapped with the network.

``OverlappedSha256`` looks like a ``hashlib`` sha256 to its callers (``update``,
``hexdigest``, ``digest``, ``copy``), but ``update`` only queues the chunk: a helper thread
hashes it (hashlib releases the GIL on large buffers), so a single-stream download costs the
receiving thread — or the event loop — no hashing time. The same thread computes the body's
xxh3-128 seal (``core.seal``) and remembers it under the sha256, so the cache can seal a file it
shares with its target without reading it again. At most ``MAX_PENDING`` chunks wait (the
memory bound); a reader of the digest waits for the queue to drain. The helper thread exits
when idle, so an abandoned hasher leaves no thread behind.
"""

from __future__ import annotations

import hashlib
import queue
import threading

from . import seal

#: Chunks queued at most (a chunk is at most the request's chunk_size: 7.5 MiB by default).
MAX_PENDING = 64
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
        self._queue: queue.Queue[bytes] = queue.Queue(MAX_PENDING)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        chunk = data if isinstance(data, bytes) else bytes(data)  # a reused buffer is copied
        if not chunk:
            return
        with self._lock:
            self._queue.put(chunk)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, daemon=True,
                                                name="vllm_fetch-sha256")
                self._worker.start()

    def _run(self) -> None:
        while True:
            try:
                chunk = self._queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._worker = None
                        return
                continue
            try:
                self._sha.update(chunk)
                self._seal.update(chunk)
            finally:
                self._queue.task_done()

    def _settled(self) -> None:
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
