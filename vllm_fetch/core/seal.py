"""The seal of a stored body: its xxh3-128, checked before a body the cache shares with a file
outside its store (a hard-linked target, a file recorded by reference) is served.

sha256 names a body; the seal is the fast check that the bytes still are that body (xxh3-128
runs at memory speed). A seal is a function of the content alone, so a seal computed for a
sha256 is right for every copy of that body. ``remember``/``known`` keep the seals computed
while downloads were hashed (``core.download_machine``) for the cache to use without reading the
file again. (Issue 13 seals every stored body in the index; when merged, the two are one.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import xxhash

#: How many recent (sha256 -> seal) pairs are kept.
_KEEP = 64
_known: OrderedDict[str, str] = OrderedDict()
_lock = threading.Lock()


def seal_of(data: bytes | bytearray | memoryview) -> str:
    """The seal of one body held in memory."""
    return str(xxhash.xxh3_128_hexdigest(data))


def new_sealer() -> xxhash.xxh3_128:
    """A running seal, fed block by block."""
    return xxhash.xxh3_128()


def remember(sha256: str, seal: str) -> None:
    with _lock:
        _known[sha256] = seal
        _known.move_to_end(sha256)
        while len(_known) > _KEEP:
            _known.popitem(last=False)


def known(sha256: str) -> str | None:
    """The seal computed for this sha256 while it streamed in this process, if any."""
    with _lock:
        return _known.get(sha256)
