"""The process-local memory tier: small bodies that were read from the disk cache and passed
their seal check, kept with their decoded index entry, least recently used first out.

It only holds; ``FetchCache.held`` decides whether a copy is still valid (its generation
stamp and its blob's signature) and ``memory_hits`` what may be served from it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import NamedTuple

from ..core.cache_policy import CacheEntry
from ..core.generations import Stamp

#: Default bound on the bytes the tier holds per cache and process (0 turns it off).
DEFAULT_MEMORY_SIZE = 64 * 2**20
#: Bodies larger than this are never held in memory.
ITEM_MAX = 2**20


class Held(NamedTuple):
    """One body in memory: the entry it was read with, the generation stamp taken before the
    entry was read, and the signature of the blob taken before its bytes were read."""

    entry: CacheEntry
    data: bytes
    stamp: Stamp
    signature: Hashable


class MemoryTier:
    """An LRU of ``Held`` bodies bounded to ``limit`` bytes (each at most ``item_max``)."""

    def __init__(self, limit: int, item_max: int = ITEM_MAX) -> None:
        self.limit = limit
        self.item_max = min(item_max, limit)
        self._items: OrderedDict[str, Held] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: the copies stay valid (the mapping is shared); the lock starts
        free."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def fits(self, size: int) -> bool:
        return 0 <= size <= self.item_max

    def get(self, key: str) -> Held | None:
        """The held body for ``key`` (now the most recently used), or None. No lock: each
        OrderedDict operation is atomic, and a key dropped in between is just a miss."""
        items = self._items
        held = items.get(key)
        if held is not None:
            try:
                items.move_to_end(key)
            except KeyError:
                return None
        return held

    def put(self, key: str, held: Held) -> None:
        if not self.fits(len(held.data)):
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old.data)
            self._items[key] = held
            self._bytes += len(held.data)
            while self._bytes > self.limit:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted.data)

    def drop(self, key: str, held: Held | None = None) -> None:
        """Forget ``key`` (only if it still holds ``held``, when given)."""
        with self._lock:
            current = self._items.get(key)
            if current is not None and (held is None or current is held):
                del self._items[key]
                self._bytes -= len(current.data)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
