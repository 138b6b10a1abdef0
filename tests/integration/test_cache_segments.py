"""Small bodies packed in segment files, against real processes, real kills and real damage.

Every read is the whole body asked for (checked by sha256) or a miss: after a writer is
SIGKILLed mid-append, after a byte of a record is flipped, while another process compacts.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache_entries import fresh_entry
from tests.cache_origin import Resource, serve_resource
from tests.helpers import call, flip_stored_byte, stored_bytes
from tests.origin import Origin, sha256
from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy
from vllm_fetch.cache.housekeeping import prune
from vllm_fetch.core.cache_policy import cache_key
from vllm_fetch.core.segment_record import ALIGN, HEADER_SIZE, SEGMENT_BODY_MAX

MODES = ["sync", "async"]
ROOT = Path(__file__).resolve().parents[2]

# A writer of deterministic bodies ``body(i)`` under ``https://seg.example/<i>``.
# loop START GROUP: groups of GROUP bodies, each flushed (committed), then "committed <last i>"
#   printed; forever, until killed.
# torn START: one group whose segment write stops half-way, "torn" printed, then it waits to
#   be killed mid-append.
# torn-direct START: a first group of 40 bodies into a new segment, whose first staging buffer
#   is written (direct I/O) before "torn" is printed and it waits to be killed.
# read START STOP: one JSON line {i: sha256 or null} for the bodies START..STOP-1.
WORKER = textwrap.dedent("""
    import hashlib, json, os, sys, time
    from vllm_fetch import FetchCache
    from vllm_fetch.cache import segments
    from vllm_fetch.core.cache_policy import cache_key
    from tests.cache_entries import fresh_entry
    from tests.integration.test_cache_segments import body

    mode, directory, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cache = FetchCache(directory)

    def submit(i):
        url = f"https://seg.example/{i}"
        cache.submit_bytes(cache_key(url), fresh_entry(url), body(i), None)

    if mode == "loop":
        group, i = int(sys.argv[4]), start
        while True:
            for _ in range(group):
                submit(i)
                i += 1
            cache.flush()
            print(f"committed {i - 1}", flush=True)
    elif mode == "torn-direct":
        real = segments._pwrite_all
        def first_then_hang(fd, buffers, offset):
            if offset:  # the group's first staging buffer is on disk: hang before the next
                print("torn", flush=True)
                time.sleep(600)
            real(fd, buffers, offset)
        segments._pwrite_all = first_then_hang
        for i in range(start, start + 40):  # ~4 MB: more than one staging buffer
            submit(i)
        cache.flush()
    elif mode == "torn":
        def half_then_hang(fd, buffers, offset):
            data = b"".join(bytes(b) for b in buffers)
            os.pwrite(fd, data[: len(data) // 2], offset)
            print("torn", flush=True)
            time.sleep(600)
        segments._pwrite_all = half_then_hang
        for i in range(start, start + 8):
            submit(i)
        cache.flush()
    else:
        out = {}
        for i in range(start, int(sys.argv[4])):
            url = f"https://seg.example/{i}"
            key = cache_key(url)
            entry = cache.index.get(key)
            data = cache.read(key, entry, time.time()) if entry is not None else None
            out[i] = None if data is None else hashlib.sha256(data).hexdigest()
        print(json.dumps(out), flush=True)
""")


def body(i: int) -> bytes:
    """The body number ``i``: 1 KB to ~200 KB, distinct, reproducible in any process."""
    size = 1000 + (i * 7919) % 200_000
    block = hashlib.sha256(f"segment body {i}".encode()).digest()
    return (block * (size // 32 + 1))[:size]


def url(i: int) -> str:
    return f"https://seg.example/{i}"


def worker(*args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WORKER, *map(str, args)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a worker and collect what it left in its pipes."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def read_back(directory: Path, start: int, stop: int) -> dict[int, str | None]:
    proc = worker("read", directory, start, stop)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return {int(k): v for k, v in json.loads(out).items()}


def store(cache: FetchCache, i: int) -> None:
    assert cache.store_bytes(cache_key(url(i)), fresh_entry(url(i)), body(i), None)


def read(cache: FetchCache, i: int) -> bytes | None:
    key = cache_key(url(i))
    entry = cache.index.get(key)
    return cache.read(key, entry, time.time()) if entry is not None else None


def segment_bytes(cache: FetchCache) -> int:
    assert cache.blobs.segments is not None
    return sum(os.stat(cache.blobs.segments.path(n)).st_size
               for n in cache.blobs.segments.names())


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache")
    yield store
    store.close()


def test_small_bodies_are_segment_records_and_big_ones_files(cache: FetchCache) -> None:
    store(cache, 1)
    big = os.urandom(SEGMENT_BODY_MAX + 1)
    assert cache.store_bytes("k" * 64, fresh_entry("https://seg.example/big"), big, None)
    assert cache.blobs.segments is not None
    small = cache.blobs.holder(sha256(body(1)))
    assert small is not None and small[0].suffix == ".seg" and small[1] == HEADER_SIZE
    assert cache.blobs.holder(sha256(big)) == (cache.blobs.path(sha256(big)), 0, len(big))
    assert stored_bytes(cache, sha256(body(1))) == body(1)
    assert read(cache, 1) == body(1)
    assert cache.blobs.kind(sha256(body(1))) == "copy"


def test_sigkill_mid_append_is_a_miss_never_a_torn_body(tmp_path: Path) -> None:
    """A writer killed half-way through a group's append: none of that group is served (the
    index never pointed at it), the bodies committed before are, and the next writer, a
    compaction and the reads after them work."""
    directory = tmp_path / "cache"
    first = worker("loop", directory, 0, 16)
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "committed 15"
    kill(first)
    torn = worker("torn", directory, 100)
    assert torn.stdout is not None
    assert torn.stdout.readline().strip() == "torn"
    kill(torn)
    seen = read_back(directory, 0, 108)
    assert all(seen[i] == sha256(body(i)) for i in range(16))  # committed: still there
    assert all(seen[i] is None for i in range(100, 108))  # the torn group: misses
    cache = FetchCache(directory)
    assert cache.blobs.segments is not None
    names = cache.blobs.segments.names()
    assert len(names) == 2  # one per writer process
    on_disk = {h.sha256 for n in names for _, h in cache.blobs.segments.scan(n)}
    assert sha256(body(100)) not in on_disk or sha256(body(107)) not in on_disk  # torn
    for i in range(200, 210):  # a new writer appends after the wreckage
        store(cache, i)
    cache.invalidate(cache_key(url(0)))  # body 0 is an orphan now, collected after its grace
    report = prune(cache.index, cache.blobs, directory / "lock", max_size=None,
                   older_than=None, now=time.time() + 3600)
    assert report.removed_blobs == 1
    assert len(cache.blobs.segments.names()) == 2  # the torn writer's segment had no record
    assert names[0] not in cache.blobs.segments.names() or names[1] not in (
        cache.blobs.segments.names())  # the index pointed at: it was dropped whole
    assert all(read(cache, i) == body(i) for i in [*range(1, 16), *range(200, 210)])
    assert all(read(cache, i) is None for i in [0, *range(100, 108)])
    cache.close()


def test_random_sigkills_leave_every_read_whole_or_a_miss(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    rng = random.Random(17)
    committed: list[int] = []
    for round_ in range(4):
        start = 1000 * round_
        proc = worker("loop", directory, start, 8)
        assert proc.stdout is not None
        last = None
        for _ in range(rng.randint(1, 3)):
            last = int(proc.stdout.readline().split()[1])
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in a later group: hashing, appending...
        kill(proc)
        assert last is not None
        committed += range(start, last + 1)
        seen = read_back(directory, start, last + 200)
        for i, digest in seen.items():
            assert digest in (None, sha256(body(i))), i  # whole, or a miss
            if i <= last:
                assert digest == sha256(body(i)), i  # committed before the kill: kept
    seen = read_back(directory, 0, 4000)
    assert all(seen[i] == sha256(body(i)) for i in committed)
    cache = FetchCache(directory)  # writing and compacting after four crashes
    for i in range(5000, 5010):
        store(cache, i)
    cache.prune(max_size=10**9)
    assert all(read(cache, i) == body(i) for i in [*committed, *range(5000, 5010)])
    cache.close()


def test_another_process_sees_committed_bodies(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    cache = FetchCache(directory)
    for i in range(5):
        url_i = url(i)
        cache.submit_bytes(cache_key(url_i), fresh_entry(url_i), body(i), None)
    cache.flush()  # committed: the group's records and entries in one transaction
    assert read_back(directory, 0, 6) == {**{i: sha256(body(i)) for i in range(5)}, 5: None}
    writer = worker("loop", directory, 10, 4)  # and the other way round
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "committed 13"
    kill(writer)
    assert all(read(cache, i) == body(i) for i in range(10, 14))
    cache.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_flipped_byte_in_a_record_is_refetched_and_others_still_hit(
        mode: str, origin: Origin, cache: FetchCache) -> None:
    bodies = [os.urandom(30_000) for _ in range(3)]
    urls = [serve_resource(origin, f"/r{i}", Resource(b, cache_control="max-age=600"))
            for i, b in enumerate(bodies)]
    conn = HTTPConnection(retry=RetryPolicy.none(), cache=cache)
    for u in urls:
        call(mode, conn, "get_bytes", u)
    cache.flush()
    assert len({cache.blobs.holder(sha256(b))[0] for b in bodies}) == 1  # type: ignore[index]
    flip_stored_byte(cache, sha256(bodies[1]), 12_345)
    assert [sha256(call(mode, conn, "get_bytes", u)) for u in urls] == [
        sha256(b) for b in bodies]
    assert [origin.count(f"/r{i}") for i in range(3)] == [1, 2, 1]
    cache.flush()
    assert stored_bytes(cache, sha256(bodies[1])) == bodies[1]  # stored again, whole
    assert [sha256(call(mode, conn, "get_bytes", u)) for u in urls] == [
        sha256(b) for b in bodies]
    assert [origin.count(f"/r{i}") for i in range(3)] == [1, 2, 1]
    conn.close()


def test_eviction_and_compaction_keep_live_bodies_and_reclaim_space(cache: FetchCache) -> None:
    for i in range(40):
        store(cache, i)
    before = segment_bytes(cache)
    for i in range(0, 40, 4):  # a quarter of them still wanted: touched, so used later
        cache.index.touch(cache_key(url(i)), time.time() + 100)
    keep = sum(len(body(i)) for i in range(0, 40, 4))
    report = cache.prune(max_size=keep + 200_000 + 40 * 2048)
    assert report.removed_entries >= 20
    alive = [i for i in range(40) if cache.index.get(cache_key(url(i))) is not None]
    assert set(range(0, 40, 4)) <= set(alive)
    assert all(read(cache, i) == body(i) for i in alive)  # moved into a new segment, whole
    assert all(read(cache, i) is None for i in set(range(40)) - set(alive))
    after = segment_bytes(cache)
    assert after < before / 2  # the dead records' bytes were given back
    # no dead bytes left but the filler that ends the copies' group on an ALIGN boundary
    # (direct I/O; core.segment_record.filler_size)
    assert after <= sum(len(body(i)) + HEADER_SIZE for i in alive) + ALIGN + HEADER_SIZE
    assert cache.verify().corrupt == []
    store(cache, 99)  # and the store goes on
    assert read(cache, 99) == body(99)


def test_compaction_in_one_process_while_another_reads(tmp_path: Path) -> None:
    """Records move under a reader in another process: it finds every live body, whole."""
    directory = tmp_path / "cache"
    cache = FetchCache(directory)
    for i in range(60):
        store(cache, i)
    reader = worker("read", directory, 0, 60)  # one full pass, started before any move
    for round_ in range(3):
        for i in range(round_, 60, 6):  # drop some, so the segments are mostly dead
            cache.invalidate(cache_key(url(i)))
        cache.prune(max_size=10**9)
        again = read_back(directory, 0, 60)
        for i, digest in again.items():
            dropped = i % 6 <= round_
            assert digest == (None if dropped else sha256(body(i))), (round_, i)
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    first = {int(k): v for k, v in json.loads(out).items()}
    assert all(v in (None, sha256(body(i))) for i, v in first.items())
    cache.close()


def test_verify_reports_a_damaged_record(cache: FetchCache) -> None:
    for i in range(3):
        store(cache, i)
    flip_stored_byte(cache, sha256(body(1)), 5)
    report = cache.verify(remove=False)
    assert report.corrupt == [sha256(body(1))] and report.checked == 3
    assert read(cache, 0) == body(0) and read(cache, 2) == body(2)
    report = cache.verify()
    assert report.corrupt == [sha256(body(1))] and report.removed_entries == 1
    assert read(cache, 1) is None and cache.verify().corrupt == []


def test_clear_removes_segments_and_a_writer_elsewhere_starts_a_new_one(
        tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    first, second = FetchCache(directory), FetchCache(directory)
    store(first, 1)  # ``first`` now appends to a segment of its own
    second.clear()
    assert not (directory / "blobs" / "segments").exists()
    assert read(first, 1) is None and first.info().entries == 0
    store(first, 2)  # its segment was removed: it starts another
    assert read(second, 2) == body(2)
    assert second.blobs.segments is not None and len(second.blobs.segments.names()) == 1
    first.close()
    second.close()


@pytest.mark.parametrize("mode", MODES)
def test_download_file_from_a_segment_held_body(mode: str, origin: Origin, cache: FetchCache,
                                                tmp_path: Path) -> None:
    data = os.urandom(70_000)
    one = serve_resource(origin, "/one", Resource(data, cache_control="max-age=600"))
    two = serve_resource(origin, "/two", Resource(data, cache_control="max-age=600"))
    conn = HTTPConnection(retry=RetryPolicy.none(), cache=cache)
    call(mode, conn, "get_bytes", one)
    cache.flush()
    held = cache.blobs.holder(sha256(data))
    assert held is not None and held[0].suffix == ".seg"
    call(mode, conn, "download_file", one, tmp_path / "a.bin")
    call(mode, conn, "download_file", two, tmp_path / "b.bin", expected_sha256=sha256(data))
    assert (tmp_path / "a.bin").read_bytes() == data == (tmp_path / "b.bin").read_bytes()
    assert origin.count("/one") == 1 and origin.count("/two") == 0
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    flip_stored_byte(cache, sha256(data), 100)  # a damaged record is never published
    call(mode, conn, "download_file", two, tmp_path / "c.bin", expected_sha256=sha256(data))
    assert (tmp_path / "c.bin").read_bytes() == data and origin.count("/two") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "c.bin", "cache"]
    conn.close()


def _direct(cache: FetchCache) -> bool:
    assert cache.blobs.segments is not None
    active = cache.blobs.segments._active
    assert active is not None
    return active.direct


def test_direct_io_groups_end_on_a_boundary_and_scans_skip_the_fillers(
        cache: FetchCache) -> None:
    """Where the filesystem does direct I/O (ext4 here) each group ends on an ALIGN
    boundary, its filler never a record; elsewhere the records follow each other."""
    sizes = []
    for group in range(3):
        for i in range(group * 5, group * 5 + 5):
            cache.submit_bytes(cache_key(url(i)), fresh_entry(url(i)), body(i), None)
        cache.flush()
        assert cache.blobs.segments is not None
        (name,) = cache.blobs.segments.names()
        sizes.append(os.stat(cache.blobs.segments.path(name)).st_size)
    records = sum(len(body(i)) + HEADER_SIZE for i in range(15))
    if _direct(cache):
        assert all(size % ALIGN == 0 for size in sizes)
        assert records < sizes[-1] <= records + 3 * (ALIGN + HEADER_SIZE)
    else:
        assert sizes[-1] == records
    found = [(h.sha256, h.length) for _, h in cache.blobs.segments.scan(name)]
    assert found == [(sha256(body(i)), len(body(i))) for i in range(15)]
    assert all(read(cache, i) == body(i) for i in range(15))


def test_sigkill_mid_direct_append_is_a_miss_never_a_torn_body(tmp_path: Path) -> None:
    """Killed after the first staging buffer of a group reached the disk: the records in it
    are whole on disk, yet none of the group is served; what was committed before is."""
    directory = tmp_path / "cache"
    first = worker("loop", directory, 0, 8)
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "committed 7"
    kill(first)
    torn = worker("torn-direct", directory, 300)
    assert torn.stdout is not None
    assert torn.stdout.readline().strip() == "torn"
    kill(torn)
    seen = read_back(directory, 0, 340)
    assert all(seen[i] == sha256(body(i)) for i in range(8))
    assert all(seen[i] is None for i in range(300, 340))
    cache = FetchCache(directory)
    assert cache.blobs.segments is not None
    on_disk = {h.sha256 for n in cache.blobs.segments.names()
               for _, h in cache.blobs.segments.scan(n)}
    assert sha256(body(300)) in on_disk  # its record was written whole, never committed
    assert sha256(body(339)) not in on_disk
    for i in range(400, 405):  # a new writer appends after the wreckage
        store(cache, i)
    assert all(read(cache, i) == body(i) for i in [*range(8), *range(400, 405)])
    cache.close()


def test_a_refused_direct_write_falls_back_to_the_page_cache(
        cache: FetchCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that takes O_DIRECT on open but refuses the write (EINVAL): the group is
    written through the page cache instead, and so is everything after it."""
    from vllm_fetch.cache import segments

    real = segments._pwrite_all
    refused = []

    def no_direct(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, buffers, offset)

    monkeypatch.setattr(segments, "_pwrite_all", no_direct)
    store(cache, 1)
    store(cache, 2)
    assert cache.blobs.segments is not None
    assert len(refused) <= 1 and not _direct(cache) and not cache.blobs.segments._direct
    (name,) = cache.blobs.segments.names()
    assert os.stat(cache.blobs.segments.path(name)).st_size == sum(
        len(body(i)) + HEADER_SIZE for i in (1, 2))  # no filler: records back to back
    assert read(cache, 1) == body(1) and read(cache, 2) == body(2)
    assert read_back(cache.directory, 1, 3) == {1: sha256(body(1)), 2: sha256(body(2))}
