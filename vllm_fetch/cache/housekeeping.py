"""Eviction, pruning and verification: whole-cache passes over the index and the blob store.

Every pass runs under one cross-process file lock, so two processes never evict at once.
What counts against the size limit is what the cache occupies on disk: each blob in whole
filesystem blocks (``blob_cost``: a 10-byte body takes a 4 KiB block), ``INDEX_BASE`` for the
empty index and ``ENTRY_COST`` for each index entry (its record, key, last-used row and
SQLite's page overhead), so a flood of distinct URLs for one tiny body is bounded too.
Eviction drops the least recently used entries first, and a blob with its last entry. Blobs
that no entry references (left by a replaced entry, or by a crash between writing a blob and
its entry) are removed once older than ``ORPHAN_GRACE`` seconds.

A body held in a segment file is removed by dropping its index record: its bytes are dead
until the segment is compacted, which every prune does for segments at most half live, and
for any segment with dead bytes while the cache still occupies more than asked. Dead bytes
count against the limit until then.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from ..core.segment_record import COMPACT_LIVE_FRACTION
from .blobs import BlobInfo, BlobStore
from .costs import ENTRY_COST, INDEX_BASE, blob_cost
from .index import Index

logger = logging.getLogger("vllm_fetch.cache")

#: A blob younger than this with no entry may be a store in progress in another process.
ORPHAN_GRACE = 60.0


@dataclass(frozen=True)
class PruneReport:
    """What a prune or eviction removed."""

    removed_blobs: int = 0
    removed_entries: int = 0
    freed_bytes: int = 0


@dataclass(frozen=True)
class VerifyReport:
    """What ``FetchCache.verify`` found: blobs checked, corrupt ones, entries dropped."""

    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    removed_entries: int = 0


@dataclass
class _Scan:
    blobs: dict[str, BlobInfo]
    keys_by_blob: dict[str, list[str]]
    last_used: dict[str, float]
    entries: list[tuple[float, str, str]]  # (last used, key, sha256)
    dead: int = 0  # bytes of segment files no record points at

    def occupied(self) -> int:
        """What the cache is charged: blobs in blocks, dead segment bytes, every entry."""
        blobs = sum(blob_cost(info.held) for info in self.blobs.values())
        entries = ENTRY_COST * sum(len(keys) for keys in self.keys_by_blob.values())
        return INDEX_BASE + blobs + self.dead + entries


def _scan(index: Index, blobs: BlobStore) -> _Scan:
    keys_by_blob: dict[str, list[str]] = defaultdict(list)
    last_used: dict[str, float] = {}
    entries: list[tuple[float, str, str]] = []
    for key, entry, used in index.items():
        keys_by_blob[entry.sha256].append(key)
        last_used[entry.sha256] = max(used, last_used.get(entry.sha256, 0.0))
        entries.append((used, key, entry.sha256))
    return _Scan({b.sha256: b for b in blobs.iter_blobs()}, keys_by_blob, last_used, entries,
                 blobs.dead_bytes())


def _remove_blob(index: Index, blobs: BlobStore, scan: _Scan, sha: str) -> int:
    """Delete a blob and every entry pointing at it; the bytes freed."""
    for key in scan.keys_by_blob.pop(sha, []):
        index.delete(key)
    scan.blobs.pop(sha, None)
    index.forget_seal(sha)
    return blobs.remove(sha)


def prune(
    index: Index, blobs: BlobStore, lock: Path, *, max_size: int | None,
    older_than: float | None, now: float | None = None,
) -> PruneReport:
    """Drop orphans, blobs unused for ``older_than`` seconds, then least recently used entries
    (and a blob with its last one) until what the cache occupies (``_Scan.occupied``) is at
    most ``max_size``. Blobs being read in this process are kept. ``freed_bytes``: blob bytes."""
    now = time.time() if now is None else now
    with FileLock(str(lock)):
        scan = _scan(index, blobs)
        removed_blobs = removed_entries = freed = 0

        def drop(sha: str) -> None:
            nonlocal removed_blobs, removed_entries, freed
            removed_entries += len(scan.keys_by_blob.get(sha, []))
            freed += _remove_blob(index, blobs, scan, sha)
            removed_blobs += 1

        blobs.remove_stale_temps(now - ORPHAN_GRACE)
        for sha, info in list(scan.blobs.items()):
            orphan = sha not in scan.keys_by_blob and now - info.mtime > ORPHAN_GRACE
            unused = now - scan.last_used.get(sha, info.mtime)
            stale = older_than is not None and unused > older_than
            if (orphan or stale) and not blobs.is_pinned(sha):
                drop(sha)
        for key_sha in [s for s in scan.keys_by_blob if s not in scan.blobs]:
            for key in scan.keys_by_blob.pop(key_sha):  # entries whose blob is gone
                index.delete(key)
                removed_entries += 1
        total = scan.occupied()
        if max_size is not None and total > max_size and scan.dead:  # reclaim before evicting
            blobs.compact(live_fraction=1.0, budget=total - max_size)
            scan.dead = blobs.dead_bytes()
            total = scan.occupied()
        if max_size is not None and total > max_size:
            for _, key, sha in sorted(scan.entries):  # least recently used entries first
                if total <= max_size:
                    break
                keys = scan.keys_by_blob.get(sha)
                if not keys or key not in keys or blobs.is_pinned(sha):
                    continue
                index.delete(key)
                keys.remove(key)
                removed_entries += 1
                total -= ENTRY_COST
                if not keys and sha in scan.blobs:  # its last entry: the blob goes too
                    total -= blob_cost(scan.blobs[sha].held)
                    drop(sha)
        total -= scan.dead  # now counted as it is after compaction:
        blobs.compact(live_fraction=COMPACT_LIVE_FRACTION)
        dead = blobs.dead_bytes()
        if max_size is not None and total + dead > max_size and dead:
            blobs.compact(live_fraction=1.0, budget=total + dead - max_size)
            dead = blobs.dead_bytes()
        index.set_bytes(total + dead - INDEX_BASE)  # the running total leaves the base out
    if removed_blobs:
        logger.info("cache: removed %d blobs (%d bytes) and %d entries",
                    removed_blobs, freed, removed_entries)
    return PruneReport(removed_blobs, removed_entries, freed)


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(index: Index, blobs: BlobStore, lock: Path, *, remove: bool) -> VerifyReport:
    """Re-hash every blob; report (and with ``remove``, delete) those whose bytes do not match
    their name, with the entries that point at them."""
    with FileLock(str(lock)):
        scan = _scan(index, blobs)
        corrupt: list[str] = []
        removed_entries = 0
        for sha, info in list(scan.blobs.items()):
            try:
                if info.location is not None:
                    held = blobs.check_record(info, index.seal_of(sha))
                    if held is None:
                        continue
                    ok = held
                else:
                    ok = hash_file(info.path) == sha
            except FileNotFoundError:
                continue
            if ok:
                continue
            logger.warning("cache blob %s is corrupt", sha)
            corrupt.append(sha)
            if remove:
                removed_entries += len(scan.keys_by_blob.get(sha, []))
                _remove_blob(index, blobs, scan, sha)
        index.set_bytes(scan.occupied() - INDEX_BASE)
    return VerifyReport(len(scan.blobs) + (len(corrupt) if remove else 0), corrupt,
                        removed_entries)
