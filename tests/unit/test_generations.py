"""Generation tokens (``core.generations``, no I/O), their mapped file, the memory tier's LRU and
the blob signature that guard memory copies of cached bodies."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_fetch.cache import blobs as blob_store
from vllm_fetch.cache import generation_file
from vllm_fetch.cache.blobs import BlobStore
from vllm_fetch.cache.generation_file import GenerationFile
from vllm_fetch.cache.memory_tier import Held, MemoryTier
from vllm_fetch.core.cache_policy import CacheEntry
from vllm_fetch.core.generations import BUFFER_BYTES, SLOTS, Generations, Stamp, slot_of


def key(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def same_slot_keys() -> tuple[str, str]:
    first = key(0)
    for n in range(1, 100_000):
        if slot_of(key(n)) == slot_of(first):
            return first, key(n)
    raise AssertionError("no two keys share a slot")


def other_slot_key(of: str) -> str:
    return next(key(n) for n in range(1, 100) if slot_of(key(n)) != slot_of(of))


def tokens(*values: int) -> Iterator[int]:
    yield from values


def generations(*values: int) -> Generations:
    source = tokens(*values)
    return Generations(memoryview(bytearray(BUFFER_BYTES)).cast("Q"), lambda: next(source))


def test_a_stamp_stays_valid_until_its_key_changes() -> None:
    gens = generations(11, 12)
    k = key(1)
    stamp = gens.stamp(k)
    assert gens.still_valid(stamp)
    gens.changed(other_slot_key(k))
    assert gens.still_valid(stamp)  # another slot: untouched
    gens.changed(k)
    assert not gens.still_valid(stamp)
    assert gens.still_valid(gens.stamp(k))  # a stamp taken after the write is valid


def test_a_write_to_a_key_sharing_the_slot_voids_the_stamp() -> None:
    first, second = same_slot_keys()
    gens = generations(7)
    stamp = gens.stamp(first)
    gens.changed(second)
    assert not gens.still_valid(stamp)


def test_clearing_voids_every_stamp() -> None:
    gens = generations(5)
    stamps = [gens.stamp(key(n)) for n in range(50)]
    gens.changed_all()
    assert not any(gens.still_valid(s) for s in stamps)


def test_a_token_never_repeats_the_current_value_nor_zero() -> None:
    # random tokens: a writer that drew the slot's current value (or 0, "never written") draws
    # again, so a reader's recorded token can never come back by a write
    gens = generations(9, 9, 0, 9, 4)
    k = key(3)
    gens.changed(k)  # 9
    stamp = gens.stamp(k)
    assert stamp.token == 9
    gens.changed(k)  # draws 9 (current), 0, 9, then 4
    assert not gens.still_valid(stamp) and gens.stamp(k).token == 4


def test_racing_writers_cannot_restore_a_recorded_token() -> None:
    # two writers, one slot: whatever order their writes land in, the value differs from the
    # one the reader recorded (increments could both go 5 -> 6 from the reader's 5)
    gens = generations(5, 6, 7)
    k = key(8)
    gens.changed(k)
    stamp = gens.stamp(k)
    gens.changed(k)
    gens.changed(k)
    assert not gens.still_valid(stamp)


def test_slots_and_buffer_shape() -> None:
    assert all(1 <= slot_of(key(n)) <= SLOTS for n in range(2000))
    assert len({slot_of(key(n)) for n in range(20_000)}) > SLOTS * 0.95  # spread evenly
    with pytest.raises(ValueError):
        Generations(memoryview(bytearray(64)).cast("Q"), lambda: 1)


def test_two_mappings_of_the_file_see_each_others_writes(tmp_path: Path) -> None:
    # as two processes would: each maps the file; a write by one voids the other's stamps
    replaced: list[str] = []
    reader = GenerationFile(tmp_path, on_replaced=lambda: replaced.append("reader"))
    writer = GenerationFile(tmp_path, on_replaced=lambda: replaced.append("writer"))
    assert (tmp_path / "generations").stat().st_size == BUFFER_BYTES
    k = key(1)
    stamp = reader.stamp(k)
    assert reader.still_valid(stamp)
    writer.changed(k)
    assert not reader.still_valid(stamp)
    stamp = reader.stamp(k)
    writer.changed_all()
    assert not reader.still_valid(stamp)
    assert replaced == []


def test_a_replaced_file_is_noticed_and_its_holder_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation_file, "CHECK_EVERY", 0.0)
    replaced: list[int] = []
    gens = GenerationFile(tmp_path, on_replaced=lambda: replaced.append(1))
    stamp = gens.stamp(key(1))
    assert gens.still_valid(stamp) and replaced == []
    (tmp_path / "generations").unlink()  # a wiped cache directory
    GenerationFile(tmp_path, on_replaced=lambda: None).changed(key(2))  # another process
    assert not gens.still_valid(stamp)
    assert replaced == [1]
    assert gens.still_valid(gens.stamp(key(1)))  # now on the new file


def entry(sha: str, size: int) -> CacheEntry:
    return CacheEntry(url="http://h/", headers={}, stored_at=0.0, request_time=0.0,
                      response_time=0.0, sha256=sha, size=size)


def held(size: int) -> Held:
    return Held(entry("a" * 64, size), b"x" * size, Stamp(1, 2, 3), (1, 2))


def test_the_memory_tier_is_a_bounded_lru() -> None:
    tier = MemoryTier(limit=300, item_max=200)
    tier.put("a", held(100))
    tier.put("b", held(100))
    tier.put("big", held(201))  # over the item limit: never held
    assert len(tier) == 2 and tier.get("big") is None
    assert tier.get("a") is not None  # "a" is now the most recently used
    tier.put("c", held(150))  # 350 > 300: "b", the least recently used, goes
    assert tier.get("b") is None and tier.get("a") is not None and tier.get("c") is not None
    assert tier.bytes == 250
    current = tier.get("a")
    tier.drop("a", held(100))  # another copy: kept
    assert tier.get("a") is current
    tier.drop("a", current)
    assert tier.get("a") is None and tier.bytes == 150
    tier.clear()
    assert len(tier) == 0 and tier.bytes == 0


def test_a_blob_signature_changes_with_its_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(4096)
    sha, _ = store.put_bytes(data)
    assert store.signature(sha) is None  # just written: an edit now could keep its times
    time.sleep(blob_store.SETTLE_NS / 1e9 + 0.02)
    before = store.signature(sha)
    assert before is not None and store.signature(sha) == before
    path = store.path(sha)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"\0")
    time.sleep(blob_store.SETTLE_NS / 1e9 + 0.02)
    assert store.signature(sha) not in (None, before)
    path.unlink()
    assert store.signature(sha) is None
    assert store.signature("0" * 64) is None
