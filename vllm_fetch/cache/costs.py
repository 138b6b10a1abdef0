"""What each part of the cache is charged against its size limit: what it occupies on disk."""

from __future__ import annotations

#: Bytes one index entry is charged. Measured on ext4: 1500 entries for signed URLs of ~230
#: characters grew the database by ~0.7 KiB each; the rest covers page slack, last-used rows
#: and longer URLs or header sets.
ENTRY_COST = 1536
#: What an empty index occupies (SQLite's tables, diskcache's settings): charged always.
INDEX_BASE = 32 * 1024
#: The filesystem block a blob occupies at least (and is rounded up to).
BLOCK = 4096


def blob_cost(size: int) -> int:
    """What a blob of ``size`` bytes is charged: whole blocks, one at least."""
    return max(1, -(-size // BLOCK)) * BLOCK
