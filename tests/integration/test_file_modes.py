"""Published files follow the umask, whether the bytes came from the network or were copied out
of the cache, sync and async (issue 13, item 9)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache_origin import Resource, serve_resource
from tests.helpers import call
from tests.origin import Origin, sha256
from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy

MODES = ["sync", "async"]
BODY = os.urandom(50_000)


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield int(request.param)
    os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mode", MODES)
def test_network_and_cache_copies_follow_the_umask(mode: str, umask: int, origin: Origin,
                                                   tmp_path: Path) -> None:
    url = serve_resource(origin, "/w.bin", Resource(BODY, cache_control="max-age=600"))
    cache = FetchCache(tmp_path / "cache")
    conn = HTTPConnection(retry=RetryPolicy.none(), cache=cache)
    fetched, copied = tmp_path / "net.bin", tmp_path / "copy.bin"
    call(mode, conn, "download_file", url, fetched)
    call(mode, conn, "download_file", url, copied)  # a cache hit: copied out of the store
    other = tmp_path / "by-sha.bin"
    call(mode, conn, "download_file", origin.url("/none"), other, expected_sha256=sha256(BODY))
    assert origin.count("/w.bin") == 1 and origin.count("/none") == 0
    expected = 0o666 & ~umask
    assert (mode_of(fetched), mode_of(copied), mode_of(other)) == (expected,) * 3
    assert sha256(copied.read_bytes()) == sha256(other.read_bytes()) == sha256(BODY)
    conn.close()
    cache.close()
