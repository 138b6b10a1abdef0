"""Generation tokens: how a process knows, without I/O, that a cache entry it holds in memory
may have changed in the index (pure: works on any buffer of 64-bit slots).

The buffer is ``1 + SLOTS`` unsigned 64-bit slots (in production a small file every process
maps, ``cache/generation_file.py``). Slot 0 is the epoch, changed when the whole index goes
(``cache clear``, a rebuilt index); slot ``1 + slot_of(key)`` changes after every write,
delete or eviction of any key that hashes there. Each change writes a fresh random token,
never an increment: two writers racing on one slot can then never leave a value equal to one a
reader already recorded (an increment could go 5 → 6 by one writer and 5 → 6 by another).

The protocol: a reader takes a ``Stamp`` of the key's slot and the epoch BEFORE it reads the
index entry; a writer changes the slot AFTER its write committed. The entry read is then valid
for as long as ``still_valid(stamp)`` holds. A writer that commits between the stamp and the
read only makes the reader drop a copy that was current: a wasted read, never a stale answer.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import NamedTuple

#: Slots per buffer (besides the epoch): keys share a slot, so a write to one drops the memory
#: copies of the others in its slot too (one in 1023 of them per write: a wasted disk read
#: each, never a wrong answer). With the epoch, two 4 KiB pages.
SLOTS = 1023
#: Bytes of a buffer: the epoch and the slots, 8 bytes each.
BUFFER_BYTES = (1 + SLOTS) * 8


class Stamp(NamedTuple):
    """What a reader recorded before reading an entry: its slot and both tokens."""

    slot: int
    token: int
    epoch: int


def slot_of(key: str) -> int:
    """The slot (1..SLOTS) of a cache key (sha256 hex: its digits are uniform; any other
    string, e.g. a caller's own key, by its CRC-32)."""
    try:
        return 1 + int(key[:8], 16) % SLOTS
    except ValueError:
        return 1 + zlib.crc32(key.encode("utf-8", "surrogatepass")) % SLOTS


class Generations:
    """Reads and changes tokens in ``slots``: a writable buffer of ``1 + SLOTS`` uint64s
    (``memoryview(buffer).cast("Q")``). ``random_token`` makes the tokens writers write."""

    def __init__(self, slots: memoryview, random_token: Callable[[], int]) -> None:
        if len(slots) != 1 + SLOTS or slots.format != "Q":
            raise ValueError(f"a generation buffer holds {1 + SLOTS} uint64 slots")
        self._slots = slots
        self._random = random_token

    def stamp(self, key: str) -> Stamp:
        slot = slot_of(key)
        slots = self._slots
        return Stamp(slot, slots[slot], slots[0])

    def still_valid(self, stamp: Stamp) -> bool:
        """Whether nothing was written to the stamp's slot, nor the epoch changed, since."""
        slots = self._slots
        return slots[stamp.slot] == stamp.token and slots[0] == stamp.epoch

    def changed(self, key: str) -> None:
        """After a committed write, delete or eviction of ``key``."""
        slot = slot_of(key)
        self._slots[slot] = self._fresh(self._slots[slot])

    def changed_all(self) -> None:
        """After the whole index went (cleared, rebuilt): every stamp is void."""
        self._slots[0] = self._fresh(self._slots[0])

    def _fresh(self, current: int) -> int:
        token = self._random()
        while token == current or token == 0:  # 0: a slot never written
            token = self._random()
        return token
