"""The engine's result, as the cache glue sees it: one function per driver -> DownloadResult."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import HTTPConnection, RetryPolicy
from vllm_fetch.core.body import header
from vllm_fetch.core.results import DownloadResult
from vllm_fetch.download import DownloadOptions, async_runner, sync_runner

BODY = os.urandom(1024 * 1024 + 3)


def run(mode: str, conn: HTTPConnection, url: str, target: Path, *, hash_body: bool,
        connections: int) -> DownloadResult:
    req = dataclasses.replace(conn._request(url, timeout=10, extra_headers=None),
                              hash_body=hash_body)
    options = DownloadOptions(RetryPolicy.none(), connections=connections, progress=False)
    if mode == "sync":
        return sync_runner.download(conn._sync, req, target, options)

    async def main() -> DownloadResult:
        try:
            return await async_runner.download(conn._async, req, target, options)
        finally:
            await conn.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("connections", [1, 4])
def test_result_carries_sha256_when_asked(mode: str, connections: int, origin: Origin,
                                          tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/r")
    conn = HTTPConnection()
    hashed = run(mode, conn, url, tmp_path / "a.bin", hash_body=True, connections=connections)
    assert hashed.path == tmp_path / "a.bin"
    assert (hashed.size, hashed.sha256, hashed.status) == (len(BODY), sha256(BODY), 200)
    assert header(hashed.headers, "ETag") == '"v1"'
    plain = run(mode, conn, url, tmp_path / "b.bin", hash_body=False, connections=connections)
    assert plain.sha256 is None and plain.size == len(BODY)
    assert sha256((tmp_path / "b.bin").read_bytes()) == sha256(BODY)
    conn.close()
