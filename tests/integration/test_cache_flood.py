"""A flood of distinct signed URLs cannot grow the cache past its limit: bodies in whole blocks
and index entries both count against it; SQLite's write-ahead log (with the pages it has not
yet handed back to the filesystem) adds at most ~1 MiB (issue 13, item 8)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.origin import Origin
from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy

LIMIT = 100_000
GENERATIONS = 8192  # the memory tier's generation file: fixed, outside the limit (README)
URLS = 1500
WAL_BOUND = 1024 * 1024 + 64 * 1024  # the log's size limit, plus one checkpoint's slack


def occupied(directory: Path) -> tuple[int, int]:
    """(bytes the cache's files occupy except SQLite's log and shared memory, those two)."""
    data = log = 0
    for path in directory.rglob("*"):
        if path.is_file():
            used = path.stat().st_blocks * 512
            if path.name.endswith(("-wal", "-shm")):
                log += used
            else:
                data += used
    return data, log


def signed(origin: Origin, i: int) -> str:
    return origin.url(f"/tiny?X-Amz-Signature={i:064x}&X-Amz-Credential=AKIAEXAMPLE%2F20260101"
                      "%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_flood_of_signed_urls_stays_within_the_limit(mode: str, origin: Origin,
                                                       tmp_path: Path) -> None:
    origin.serve_bytes("/tiny", b"0123456789", headers={"Cache-Control": "max-age=600"})
    cache = FetchCache(tmp_path / "c", size_limit=LIMIT)
    conn = HTTPConnection(cache=cache, retry=RetryPolicy.none())
    urls = [signed(origin, i) for i in range(URLS)]
    if mode == "sync":
        for url in urls:
            assert conn.get_bytes(url) == b"0123456789"
    else:
        async def flood() -> None:
            for url in urls:
                assert await conn.async_get_bytes(url) == b"0123456789"
        asyncio.run(flood())
    cache.flush()
    data, log = occupied(cache.directory)
    assert log <= WAL_BOUND
    # the database file gives back freed pages at the log's next checkpoint: together they
    # stay within the limit plus the log's bound (before: 4.3 MB for this flood)
    assert (cache.directory / "generations").stat().st_size == GENERATIONS
    assert data + log <= LIMIT + WAL_BOUND + GENERATIONS, (data, log)
    entries = cache.info().entries
    assert 10 < entries < URLS  # evicted, least recently used first ...
    seen = origin.count("/tiny")
    assert conn.get_bytes(urls[-1]) == b"0123456789"
    assert origin.count("/tiny") == seen  # ... the newest still served from the cache
    conn.close()
    cache.close()
