"""The cache around the download engine: parallel and resumed downloads are stored whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import call, leftovers
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy, TruncatedBodyError

MODES = ["sync", "async"]
SIZE = 1024 * 1024 + 7
BODY = os.urandom(SIZE)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache")
    yield store
    store.close()


def blob(cache: FetchCache, digest: str) -> bytes:
    return (cache.directory / "blobs" / digest[:2] / digest[2:]).read_bytes()


@pytest.mark.parametrize("mode", MODES)
def test_parallel_download_is_cached_whole(mode: str, origin: Origin, cache: FetchCache,
                                           tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/parts")  # Last-Modified in 2015: fresh for a day
    conn = HTTPConnection(cache=cache, retry=RetryPolicy.none())
    out = tmp_path / "out"
    call(mode, conn, "download_file", url, out / "a.bin", connections=4)
    requests_made = origin.count("/parts")
    assert requests_made >= 4  # really ranged parts
    call(mode, conn, "download_file", url, out / "b.bin", connections=4)
    assert origin.count("/parts") == requests_made  # the second one came from the cache
    assert sha256((out / "b.bin").read_bytes()) == sha256(BODY)
    assert blob(cache, sha256(BODY)) == BODY
    assert leftovers(out) == ["a.bin", "b.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_resumed_download_is_cached_whole(mode: str, origin: Origin, cache: FetchCache,
                                          tmp_path: Path) -> None:
    url = RangeFile(BODY, cuts={0: SIZE // 4}).mount(origin, "/resumed")
    conn = HTTPConnection(cache=cache, retry=RetryPolicy.none())
    target = tmp_path / "r.bin"
    with pytest.raises(TruncatedBodyError):
        call(mode, conn, "download_file", url, target, connections=1)
    call(mode, conn, "download_file", url, target, connections=1)  # resumes with a 206
    seen = origin.seen("/resumed")
    assert len(seen) == 2 and seen[1].headers["Range"] == f"bytes={SIZE // 4}-"
    entries = cache.entries()
    assert [(e.size, e.sha256) for e in entries] == [(SIZE, sha256(BODY))]
    assert blob(cache, sha256(BODY)) == BODY
    assert conn.get_bytes(url) == BODY  # served from the stored whole file
    assert len(origin.seen("/resumed")) == 2
