"""The cache's storage without a network: blob store, index, housekeeping, single-flight."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from tests.cache_entries import fresh_entry
from tests.helpers import flip_stored_byte
from vllm_fetch import FetchCache, HTTPStatusError
from vllm_fetch.cache.blobs import BlobStore
from vllm_fetch.cache.costs import ENTRY_COST, INDEX_BASE, blob_cost
from vllm_fetch.cache.housekeeping import prune
from vllm_fetch.cache.single_flight import AsyncSingleFlight, SingleFlight
from vllm_fetch.config import parse_size
from vllm_fetch.core.cache_policy import cache_key
from vllm_fetch.core.segment_record import SEGMENT_BODY_MAX


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store(cache: FetchCache, url: str, data: bytes) -> str:
    key = cache_key(url)
    assert cache.store_bytes(key, fresh_entry(url), data, None)
    return key


# --- blobs --------------------------------------------------------------------------------------


def test_blob_store_dedups_and_leaves_no_temp_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = os.urandom(1000)
    assert blobs.put_bytes(data) == (sha(data), True)
    assert blobs.put_bytes(data, sha(data)) == (sha(data), False)
    assert blobs.path(sha(data)) == tmp_path / "blobs" / sha(data)[:2] / sha(data)[2:]
    assert blobs.read(sha(data), len(data)) == data
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert [b.sha256 for b in blobs.iter_blobs()] == [sha(data)]


def test_blob_store_put_file_shares_the_file_and_never_serves_it_once_edited(
        tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    data = os.urandom(300_000)
    source.write_bytes(data)
    blobs = BlobStore(tmp_path / "blobs")
    assert blobs.put_file(source, sha(data), len(data)) == (sha(data), True)
    assert blobs.path(sha(data)).stat().st_ino == source.stat().st_ino  # no second copy
    assert blobs.kind(sha(data)) == "shared"
    assert blobs.read(sha(data), len(data)) == data
    with open(source, "r+b") as f:  # the user edits the downloaded file in place
        f.write(b"edited")
    assert blobs.read(sha(data), len(data)) is None  # a miss, never the edited bytes
    assert not blobs.copy_to(sha(data), tmp_path / "again.bin")
    assert not (tmp_path / "again.bin").exists()


def test_blob_store_keeps_its_link_when_the_file_is_deleted_or_replaced(tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    data = os.urandom(100_000)
    source.write_bytes(data)
    blobs = BlobStore(tmp_path / "blobs")
    blobs.put_file(source, sha(data), len(data))
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"other bytes")
    os.replace(replacement, source)  # replaced: the blob keeps the old inode
    assert blobs.read(sha(data), len(data)) == data
    source.unlink()
    assert blobs.copy_to(sha(data), tmp_path / "again.bin")
    assert (tmp_path / "again.bin").read_bytes() == data


def _other_filesystem() -> Path:
    shm = Path("/dev/shm")
    assert shm.is_dir() and shm.stat().st_dev != Path(__file__).stat().st_dev
    return shm


def test_blob_store_records_a_file_on_another_filesystem_by_reference(tmp_path: Path) -> None:
    import tempfile
    with tempfile.TemporaryDirectory(dir=_other_filesystem()) as other:
        source = Path(other) / "model.bin"
        data = os.urandom(200_000)
        source.write_bytes(data)
        blobs = BlobStore(tmp_path / "blobs")
        assert blobs.put_file(source, sha(data), len(data)) == (sha(data), False)
        assert not blobs.path(sha(data)).exists()  # no bytes in the store
        assert blobs.kind(sha(data)) == "reference"
        assert blobs.size(sha(data)) == len(data)
        [info] = blobs.iter_blobs()
        assert (info.sha256, info.size, info.held) == (sha(data), len(data), 0)
        assert blobs.read(sha(data), len(data)) == data
        assert blobs.copy_to(sha(data), tmp_path / "copy.bin")
        assert (tmp_path / "copy.bin").read_bytes() == data
        stat = source.stat()
        with open(source, "r+b") as f:  # edited, size and mtime put back: the seal sees it
            f.write(bytes([data[0] ^ 0xFF]))  # a byte it did not hold (b"X" was, 1 in 256)
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert blobs.read(sha(data), len(data)) is None
        assert blobs.kind(sha(data)) == "missing"  # the record went with the miss
        assert blobs.remove(sha(data)) == 0
        assert source.exists()  # the user's file is never removed by the cache


def test_blob_store_reference_to_a_deleted_file_is_a_miss(tmp_path: Path) -> None:
    import tempfile
    with tempfile.TemporaryDirectory(dir=_other_filesystem()) as other:
        source = Path(other) / "model.bin"
        source.write_bytes(b"weights")
        blobs = BlobStore(tmp_path / "blobs")
        blobs.put_file(source, sha(b"weights"), 7)
        source.unlink()
        assert blobs.read(sha(b"weights"), 7) is None
        assert not blobs.copy_to(sha(b"weights"), tmp_path / "t")
        assert not blobs.present(sha(b"weights"))


def test_blob_store_links_when_asked(tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights")
    blobs = BlobStore(tmp_path / "blobs", link_files=True)
    blobs.put_file(source, sha(b"weights"), 7)
    assert blobs.path(sha(b"weights")).stat().st_ino == source.stat().st_ino
    assert blobs.copy_to(sha(b"weights"), tmp_path / "again.bin")
    assert (tmp_path / "again.bin").read_bytes() == b"weights"


def test_read_of_a_short_or_missing_blob_is_none(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    digest, _ = blobs.put_bytes(b"abc")
    assert blobs.read(digest, 4) is None
    blobs.remove(digest)
    assert blobs.read(digest, 3) is None
    assert not blobs.copy_to(digest, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_blob_size_refuses_names_that_are_not_sha256(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path / "c")
    assert cache.blob_size("../../../etc/passwd") is None
    assert cache.blob_size("zz" * 32) is None
    cache.close()


# --- FetchCache housekeeping --------------------------------------------------------------------


def test_info_entries_and_clear(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path / "c", size_limit="1MB")
    store(cache, "https://example.com/a?sig=secret", b"one")
    store(cache, "https://example.com/b", b"two")
    store(cache, "https://example.com/c", b"one")
    info = cache.info()
    assert (info.entries, info.blobs, info.bytes, info.size_limit) == (3, 2, 6, 1_000_000)
    assert info.directory == tmp_path / "c"
    urls = {item.url for item in cache.entries()}
    assert urls == {"https://example.com/a?sig=secret", "https://example.com/b",
                    "https://example.com/c"}
    cache.clear()
    assert (cache.info().entries, cache.info().blobs) == (0, 0)
    cache.close()


def test_verify_removes_corrupt_blobs_and_their_entries(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path / "c")
    good = store(cache, "https://example.com/good", b"good bytes")
    bad = store(cache, "https://example.com/bad", b"bad bytes")
    flip_stored_byte(cache, sha(b"bad bytes"), 3)  # the body's record in a segment
    report = cache.verify(remove=False)
    assert report.corrupt == [sha(b"bad bytes")] and report.checked == 2
    assert cache.index.get(bad) is not None
    report = cache.verify()
    assert report.corrupt == [sha(b"bad bytes")] and report.removed_entries == 1
    assert cache.index.get(bad) is None and cache.index.get(good) is not None
    assert not cache.blobs.present(sha(b"bad bytes"))
    assert cache.verify().corrupt == []
    cache.close()


def test_prune_by_age_and_size_keeps_pinned_blobs(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path / "c")
    keys = [store(cache, f"https://example.com/{i}", bytes([i]) * 1000) for i in range(4)]
    each = blob_cost(1000) + ENTRY_COST  # what one entry with its own blob occupies
    with cache.blobs.pinned(sha(bytes([0]) * 1000)):
        report = cache.prune(max_size=INDEX_BASE + 2 * each)
    assert report.removed_blobs == 2 and report.freed_bytes == 2000
    remaining = {e.sha256 for e in cache.entries()}
    assert sha(bytes([0]) * 1000) in remaining  # being read: kept although least recent
    assert cache.index.get(keys[3]) is not None
    report = cache.prune(older_than=-1)  # everything is older than "-1 s ago"
    assert cache.info().blobs == 0 and report.removed_entries == 2
    cache.close()


@pytest.mark.parametrize("size", [6, SEGMENT_BODY_MAX + 1])  # a segment record; a file
def test_unreferenced_blobs_are_collected_after_a_grace_period(tmp_path: Path,
                                                               size: int) -> None:
    cache = FetchCache(tmp_path / "c")
    digest, _ = cache.blobs.put_bytes(b"o" * size)
    assert cache.prune().removed_blobs == 0  # might be a store in progress
    crashed = cache.directory / "blobs" / "tmp" / "dead.part"
    crashed.parent.mkdir(exist_ok=True)
    crashed.write_bytes(b"half a body")
    old = time.time() - 3600
    os.utime(crashed, (old, old))
    later = time.time() + 3600  # the orphan's grace period is over
    report = prune(cache.index, cache.blobs, cache.directory / "lock", max_size=None,
                   older_than=None, now=later)
    assert report.removed_blobs == 1 and not cache.blobs.present(digest)
    assert not crashed.exists()
    assert cache.blobs.segments is not None and cache.blobs.segments.names() == []
    cache.close()


def test_malformed_record_is_a_miss(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path / "c")
    key = cache_key("https://example.com/x")
    cache.index.raw().set(key, {"url": 5})
    assert cache.index.get(key) is None
    assert cache.info().entries == 0
    cache.close()


def test_size_limit_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLLM_FETCH_CACHE_SIZE", "2GiB")
    cache = FetchCache(tmp_path / "c")
    assert cache.size_limit == 2 * 2**30
    cache.close()
    monkeypatch.setenv("VLLM_FETCH_CACHE_SIZE", "lots")
    with pytest.raises(ValueError, match="VLLM_FETCH_CACHE_SIZE"):
        FetchCache(tmp_path / "d")


@pytest.mark.parametrize(("text", "size"), [("10GB", 10**10), ("512MiB", 512 * 2**20),
                                            ("1000", 1000), ("1.5 kb", 1500), ("3b", 3)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "-1GB", "10 parsecs", "1e9"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# --- single flight ------------------------------------------------------------------------------


def test_single_flight_threads_share_result_and_error() -> None:
    flights = SingleFlight()
    calls = 0
    gate = threading.Event()

    def work() -> int:
        nonlocal calls
        calls += 1
        gate.wait(5)
        return 42

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(flights.run("k", work)))
               for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == [42] * 6 and calls == 1

    def fail() -> int:
        raise HTTPStatusError(404, "https://example.com/")

    with pytest.raises(HTTPStatusError):
        flights.run("k", fail)


def test_async_single_flight_followers_rerun_after_a_cancelled_leader() -> None:
    flights = AsyncSingleFlight()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return calls

    async def main() -> list[int]:
        leader = asyncio.create_task(flights.run("k", work))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(flights.run("k", work))
        await asyncio.sleep(0.01)
        leader.cancel()
        return [await follower]

    assert asyncio.run(main()) == [2]


def test_async_single_flight_shares_results_and_errors_and_survives_a_cancelled_waiter(
) -> None:
    """Waiters get the leader's result (or its FetchError); a waiter cancelled while it waits
    changes nothing for the others; ``share=False`` waiters run the work themselves after."""
    flights = AsyncSingleFlight()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return 7

    async def fail() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise HTTPStatusError(404, "https://example.com/")

    async def main() -> None:
        nonlocal calls
        tasks = [asyncio.create_task(flights.run("k", work)) for _ in range(5)]
        await asyncio.sleep(0.01)
        tasks[2].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert calls == 1 and [d for i, d in enumerate(done) if i != 2] == [7] * 4
        assert isinstance(done[2], asyncio.CancelledError)
        calls = 0
        failing = [asyncio.create_task(flights.run("e", fail)) for _ in range(3)]
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        assert calls == 1 and all(isinstance(o, HTTPStatusError) for o in outcomes)
        calls = 0
        own = [asyncio.create_task(flights.run("o", work, share=False)) for _ in range(3)]
        assert await asyncio.gather(*own) == [7, 7, 7] and calls == 3
        assert flights._by_loop[asyncio.get_running_loop()] == {}  # nothing left behind

    asyncio.run(main())


def test_unusable_index_is_bypassed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "index").write_bytes(b"a file where the index directory should be")
    cache = FetchCache(tmp_path / "c")
    assert not cache.index.available
    assert any("left as it is" in r.getMessage() for r in caplog.records)
    key = cache_key("https://example.com/x")
    assert not cache.store_bytes(key, fresh_entry("https://example.com/x"), b"x", None)
    assert cache.index.get(key) is None and cache.info().entries == 0
    cache.close()


# --- bodies queued for the writer ---------------------------------------------------------------


def test_a_queued_body_is_hashed_once_needed_and_served_from_memory(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path)
    try:
        data = os.urandom(4096)
        key = cache_key("https://example.com/q")
        cache._writer.submit = lambda job: False  # type: ignore[method-assign]  # keep it queued
        assert cache.submit_bytes(key, fresh_entry("https://example.com/q"), data, None) is None
        _, decision = cache.lookup("https://example.com/q", {}, offline=False, now=time.time())
        assert decision.entry is not None
        assert (decision.entry.sha256, decision.entry.size) == (sha(data), len(data))
        assert cache.read(key, decision.entry, time.time()) == data
        assert not cache.blobs.exists(sha(data))  # still only in memory
    finally:
        cache._pending.clear()
        cache.close()


def test_a_body_stored_without_its_digest_is_named_by_it(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path)
    try:
        data = os.urandom(8192)
        key = store(cache, "https://example.com/h", data)
        stored = cache.index.get(key)
        assert stored is not None and (stored.sha256, stored.size) == (sha(data), len(data))
        assert cache.blobs.read(sha(data), len(data)) == data
        assert [item.sha256 for item in cache.entries()] == [sha(data)]
    finally:
        cache.close()


def test_last_use_is_the_store_until_served(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path)
    try:
        key = store(cache, "https://example.com/u", b"body")
        [(found, stored, used)] = list(cache.index.items())
        assert found == key and used == stored.stored_at
        assert cache.index.raw().get("u:" + key) is None  # a store writes one record
        cache.index.touch(key, stored.stored_at + 3600)
        assert [used for *_, used in cache.index.items()] == [stored.stored_at + 3600]
        cache.index.raw().set("u:" + key, stored.stored_at - 3600)  # older than the entry
        assert [used for *_, used in cache.index.items()] == [stored.stored_at]
    finally:
        cache.close()


def test_a_group_commit_writes_what_diskcache_set_would(tmp_path: Path) -> None:
    """Entries committed in one upsert read back through diskcache, replace an older value
    kept in a file (that file is removed), and a value too big for a row still goes to one."""
    cache = FetchCache(tmp_path / "c")
    db = cache.index.raw()
    key = cache_key("https://example.com/e")
    db.set(key, {"x": "y" * 100_000})  # diskcache keeps it in a file of its own
    files = [p for p in (tmp_path / "c" / "index").rglob("*.val")]
    assert len(files) == 1
    entry = fresh_entry("https://example.com/e").with_body(sha(b"e"), 1, "ab" * 16)
    huge = fresh_entry("https://example.com/h").with_body(sha(b"h"), 1, "cd" * 16)
    huge = huge.__class__(**{**huge.to_dict(), "headers": {"x-big": "z" * 40_000},
                             "fields": (("X-Big", "z" * 40_000),)})
    assert cache.index.commit_many([(key, entry, 4096), ("h" * 64, huge, 4096)]) is not None
    assert cache.index.get(key) == entry and cache.index.get("h" * 64) == huge
    assert not files[0].exists()
    assert len(list((tmp_path / "c" / "index").rglob("*.val"))) == 1  # the huge entry's
    assert cache.index.seal_of(sha(b"e")) == "ab" * 16
    assert len(db) == 5  # two entries, two seals, the byte total
    cache.close()


def test_a_directory_where_a_blob_was_is_a_miss(tmp_path: Path) -> None:
    """Damage of another kind: the blob's name holds a directory. Reading or copying it is a
    miss (the caller fetches again), never an untyped IsADirectoryError, and no temp file."""
    blobs = BlobStore(tmp_path / "blobs")
    data = os.urandom(3 << 20)  # a file of its own, not a segment record
    digest, _ = blobs.put_bytes(data)
    blob = blobs.path(digest)
    blob.unlink()
    blob.mkdir()
    assert blobs.read(digest, len(data)) is None
    assert blobs.copy_to(digest, tmp_path / "out" / "t.bin") is False
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_verify_and_prune_go_past_a_directory_where_a_blob_was(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path / "cache")
    url = "https://example.com/big.bin"
    key, _ = cache.key_for(url, {})
    data = os.urandom(3 << 20)
    assert cache.store_bytes(key, fresh_entry(url), data, None)
    blob = cache.blobs.path(hashlib.sha256(data).hexdigest())
    blob.unlink()
    blob.mkdir()
    cache.verify(remove=False)  # no IsADirectoryError: a directory is no blob to check
    cache.verify()
    cache.prune(max_size=1024)
    assert cache.lookup(url, {}, offline=True, now=time.time())[1].entry is None
    assert blob.is_dir()  # not the cache's to delete
    cache.close()
