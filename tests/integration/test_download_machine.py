"""The download machine's promises against a real origin on 127.0.0.1, sync and async: one
retry budget per byte range (F22), never a file stitched from two versions (F21), partials
that cannot be hijacked (D9), and an event loop the async side never blocks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.helpers import call, leftovers
from tests.origin import Origin, sha256
from tests.ranged import RangeFile, ranges_asked
from vllm_fetch import HTTPConnection, RetryPolicy, TruncatedBodyError
from vllm_fetch.core.partial_names import Owner, owned_partial_name, safe_host
from vllm_fetch.core.resume import PartialState

MODES = ["sync", "async"]
SIZE = 4 * 1024 * 1024 + 7
BODY = os.urandom(SIZE)
NEW = os.urandom(SIZE)
PART = (SIZE + 3) // 4  # with connections=4, part 1 starts here
THREE = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.02)

pytestmark = pytest.mark.usefixtures("cache_disabled")


def _start(request: web.Request) -> int | None:
    value = request.headers.get("Range", "")
    return int(value[len("bytes="):].partition("-")[0]) if value else None


class ShortPart(RangeFile):
    """Every answer for part 1 (any start inside it) is cut 1000 bytes in."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        start = _start(request)
        if start is not None and PART <= start < 2 * PART:
            self.cut_ranges[start] = start + 1000
        return await super().handle(request)


def _part_one(ranges: list[str | None]) -> list[str]:
    return [r for r in ranges if r is not None and PART <= int(r[6:].partition("-")[0]) < 2 * PART]


@pytest.mark.parametrize("mode", MODES)
def test_a_part_that_always_comes_back_short_is_asked_max_attempts_times(
        mode: str, origin: Origin, tmp_path: Path) -> None:
    url = ShortPart(BODY).mount(origin, "/short")
    conn = HTTPConnection(retry=THREE)
    with pytest.raises(TruncatedBodyError) as caught:
        call(mode, conn, "download_file", url, tmp_path / "short.bin", connections=4)
    assert len(_part_one(ranges_asked(origin, "/short"))) == 3  # was 9: 3 calls x 3 parts
    assert caught.value.attempts == 3
    assert "after 3 attempts" in str(caught.value)
    assert not (tmp_path / "short.bin").exists()


@pytest.mark.parametrize("mode", MODES)
def test_a_503_on_one_part_retries_that_part(mode: str, origin: Origin, tmp_path: Path) -> None:
    served = RangeFile(BODY)
    refused: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        start = _start(request)
        if start == PART and not refused:
            refused.append(start)
            return web.Response(status=503, headers={"Retry-After": "0"})
        return await served.handle(request)

    served.origin = origin
    url = origin.route("/p503", handler)
    target = tmp_path / "p503.bin"
    call(mode, HTTPConnection(retry=THREE), "download_file", url, target, connections=4,
         expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    ranges = ranges_asked(origin, "/p503")
    assert None not in ranges and ranges.count("bytes=0-") == 1  # never one stream from zero
    assert ranges.count(f"bytes={PART}-{2 * PART - 1}") == 2  # that part again, the rest once
    assert len(ranges) == 5
    assert leftovers(tmp_path) == ["p503.bin"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("old_etag", "new_etag"), [(None, None), ('W/"a"', 'W/"b"')])
def test_a_file_replaced_between_the_first_answer_and_the_parts_is_never_stitched(
        mode: str, old_etag: str | None, new_etag: str | None, origin: Origin,
        tmp_path: Path) -> None:
    served = RangeFile(BODY, etag=old_etag, last_modified=None)

    def replace_file(number: int) -> None:
        if number == 1:
            served.data, served.etag = NEW, new_etag

    served.before = replace_file
    url = served.mount(origin, "/swap")
    target = tmp_path / "swap.bin"
    call(mode, HTTPConnection(retry=THREE), "download_file", url, target, connections=4)
    assert sha256(target.read_bytes()) in (sha256(BODY), sha256(NEW))  # one version, whole
    assert leftovers(tmp_path) == ["swap.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_a_symlink_planted_under_a_partials_name_is_never_written_through(
        mode: str, origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/sym")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    # an abandoned partial's name (this host, this process: takeable), pointing at the victim
    owner = Owner(safe_host(socket.gethostname()), os.getpid(), "0badf00d")
    planted = tmp_path / owned_partial_name("sym.bin", url, owner)
    planted.symlink_to(victim)
    sidecar = planted.with_name(planted.name + ".json")
    sidecar.write_text(json.dumps(PartialState(8, '"v1"', None, SIZE, url).to_dict()))
    target = tmp_path / "sym.bin"
    call(mode, HTTPConnection(retry=THREE), "download_file", url, target, connections=1,
         expected_sha256=sha256(BODY))
    assert victim.read_bytes() == b"precious"
    assert not target.is_symlink() and sha256(target.read_bytes()) == sha256(BODY)
    assert ranges_asked(origin, "/sym") == [None]  # nothing resumed from the planted file
    assert planted.is_symlink()  # left alone, not taken over


def test_parallel_async_download_never_blocks_the_event_loop(
        origin: Origin, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = os.urandom(32 * 1024 * 1024)
    url = RangeFile(data).mount(origin, "/loop")
    target = tmp_path / "loop.bin"
    conn = HTTPConnection(retry=THREE)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # a blocking fsync or file read on the loop takes far longer; 0.05 s also flagged a
        # callback merely preempted on a loaded 2-core machine (seen once, load average 4)
        loop.slow_callback_duration = 0.2
        try:
            await conn.async_download_file(url, target, connections=4, progress=False,
                                           expected_sha256=sha256(data))
        finally:
            await conn.aclose()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        started = time.monotonic()
        asyncio.run(main(), debug=True)
    assert sha256(target.read_bytes()) == sha256(data)
    slow = [r.getMessage() for r in caplog.records
            if r.name == "asyncio" and "vllm_fetch" in r.getMessage()]
    assert slow == [], slow
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("mode", MODES)
def test_parts_kept_from_an_older_version_are_never_continued(mode: str, origin: Origin,
                                                              tmp_path: Path) -> None:
    served = RangeFile(BODY, cut_ranges={PART: PART + 1000})
    url = served.mount(origin, "/kept")
    target = tmp_path / "kept.bin"
    once = HTTPConnection(retry=RetryPolicy.none())
    with pytest.raises(TruncatedBodyError):
        call(mode, once, "download_file", url, target, connections=4)
    assert any(p.name.endswith(".part") for p in tmp_path.iterdir())  # kept for resume
    served.data, served.etag = NEW, '"v2"'  # replaced before the next call
    call(mode, once, "download_file", url, target, connections=4, expected_sha256=sha256(NEW))
    assert sha256(target.read_bytes()) == sha256(NEW)
    assert leftovers(tmp_path) == ["kept.bin"]
