"""Parallel ranged downloads against a real loopback origin, sync and async."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp import web

from tests.helpers import call, leftovers
from tests.origin import Origin, sha256
from tests.ranged import RangeFile, ranges_asked
from vllm_fetch import ChecksumMismatchError, HTTPConnection, RetryPolicy

MODES = ["sync", "async"]
SIZE = 4 * 1024 * 1024 + 7
BODY = os.urandom(SIZE)
FAST_RETRY = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05)


# These tests count the engine's requests and partial files: the session's shared cache
# (tested in test_cache*.py) would answer some downloads from disk.
pytestmark = pytest.mark.usefixtures("cache_disabled")



@pytest.fixture
def conn() -> HTTPConnection:
    return HTTPConnection(retry=FAST_RETRY)



def covered(ranges: list[str | None], total: int) -> bool:
    """Whether the ranges asked for are ``0-`` (the probe, read up to the first part's end)
    then closed ranges that follow each other to the last byte."""
    spans = []
    for value in ranges:
        assert value is not None and value.startswith("bytes=")
        start, _, end = value[6:].partition("-")
        spans.append((int(start), int(end) if end else None))
    spans.sort()
    if spans[0] != (0, None) or any(end is None for _, end in spans[1:]):
        return False
    closed = spans[1:]
    follow = all(closed[i][1] + 1 == closed[i + 1][0] for i in range(len(closed) - 1))
    return follow and closed[0][0] > 0 and closed[-1][1] == total - 1


@pytest.mark.parametrize("mode", MODES)
def test_four_connections(mode: str, origin: Origin, conn: HTTPConnection,
                          tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/par")
    target = tmp_path / "par.bin"
    call(mode, conn, "download_file", url, target, connections=4,
         expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    ranges = ranges_asked(origin, "/par")
    assert len(ranges) == 4 and all(r is not None for r in ranges)
    assert covered(ranges, SIZE)
    assert leftovers(tmp_path) == ["par.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_falls_back_to_one_stream_without_range_support(mode: str, origin: Origin,
                                                        conn: HTTPConnection,
                                                        tmp_path: Path) -> None:
    url = RangeFile(BODY, ranges=False).mount(origin, "/plain")
    target = tmp_path / "plain.bin"
    call(mode, conn, "download_file", url, target, connections=4)
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert origin.count("/plain") == 1
    assert origin.bytes_sent == SIZE


@pytest.mark.parametrize("mode", MODES)
def test_falls_back_without_length(mode: str, origin: Origin, conn: HTTPConnection,
                                   tmp_path: Path) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length, no ranges: chunked
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, SIZE, 1 << 20):
            await response.write(BODY[i:i + (1 << 20)])
        return response

    url = origin.route("/chunked", chunked)
    target = tmp_path / "chunked.bin"
    call(mode, conn, "download_file", url, target, connections=4)
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert origin.count("/chunked") == 1


@pytest.mark.parametrize("mode", MODES)
def test_reset_part_resumes_on_its_own(mode: str, origin: Origin, conn: HTTPConnection,
                                       tmp_path: Path) -> None:
    third = (SIZE + 3) // 4 * 2  # where the third part starts (parts differ by a byte at most)
    cut = third + 300_000
    url = RangeFile(BODY, cut_ranges={third: cut}).mount(origin, "/pcut")
    target = tmp_path / "pcut.bin"
    call(mode, conn, "download_file", url, target, connections=4,
         expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    ranges = ranges_asked(origin, "/pcut")
    assert len(ranges) == 5
    # the dropped part alone was asked again, from where its bytes stopped
    assert ranges[-1] is not None and ranges[-1].startswith(f"bytes={cut}-")


@pytest.mark.parametrize("mode", MODES)
def test_version_change_between_parts_falls_back(mode: str, origin: Origin,
                                                 conn: HTTPConnection, tmp_path: Path) -> None:
    new = os.urandom(SIZE)
    served = RangeFile(BODY, last_modified=None)

    def new_version(number: int) -> None:
        if number == 1:
            served.data, served.etag = new, '"v2"'

    served.before = new_version
    url = served.mount(origin, "/pver")
    target = tmp_path / "pver.bin"
    call(mode, conn, "download_file", url, target, connections=4)
    assert sha256(target.read_bytes()) == sha256(new)  # never a splice of two versions
    assert leftovers(tmp_path) == ["pver.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_parallel_wrong_sha256(mode: str, origin: Origin, conn: HTTPConnection,
                               tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/psha")
    with pytest.raises(ChecksumMismatchError):
        call(mode, conn, "download_file", url, tmp_path / "psha.bin", connections=4,
             expected_sha256="1" * 64)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
def test_parallel_wrong_size_refused_before_parts(mode: str, origin: Origin,
                                                  conn: HTTPConnection, tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/psize")
    with pytest.raises(ChecksumMismatchError):
        call(mode, conn, "download_file", url, tmp_path / "psize.bin", connections=4,
             expected_size=SIZE + 1)
    assert origin.count("/psize") == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
def test_failed_parallel_call_resumes_parts_next_call(mode: str, origin: Origin,
                                                      tmp_path: Path) -> None:
    second = (SIZE + 3) // 4
    url = RangeFile(BODY, cut_ranges={second: second + 1000}).mount(origin, "/pnext")
    target = tmp_path / "pnext.bin"
    once = HTTPConnection(retry=RetryPolicy.none())
    with pytest.raises(Exception):  # noqa: B017 - the dropped part ends the call
        call(mode, once, "download_file", url, target, connections=4)
    assert not target.exists()
    before = origin.bytes_sent
    call(mode, once, "download_file", url, target, connections=4,
         expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert origin.bytes_sent - before < SIZE  # the second call did not start over
    assert leftovers(tmp_path) == ["pnext.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_reset_of_the_first_part_resumes_the_parts(mode: str, origin: Origin,
                                                   conn: HTTPConnection, tmp_path: Path) -> None:
    # request 0 is the probe that also carries part 0: drop it early
    url = RangeFile(BODY, cuts={0: 100_000}).mount(origin, "/p0cut")
    target = tmp_path / "p0cut.bin"
    call(mode, conn, "download_file", url, target, connections=4,
         expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    ranges = ranges_asked(origin, "/p0cut")
    assert ranges[0] == "bytes=0-"
    assert f"bytes=100000-{(SIZE + 3) // 4 - 1}" in ranges  # part 0 resumed where it broke
    assert leftovers(tmp_path) == ["p0cut.bin"]


BIG = os.urandom(1024 * 1024) * 64 + b"tail"  # just over 64 MiB: the automatic split starts


@pytest.mark.parametrize("mode", MODES)
def test_automatic_connections_for_a_large_file(mode: str, origin: Origin,
                                                conn: HTTPConnection, tmp_path: Path) -> None:
    url = RangeFile(BIG).mount(origin, "/big")
    target = tmp_path / "big.bin"
    call(mode, conn, "download_file", url, target, progress=False)
    assert sha256(target.read_bytes()) == sha256(BIG)
    ranges = ranges_asked(origin, "/big")
    assert ranges[0] == "bytes=0-" and len(ranges) > 1 and covered(ranges, len(BIG))


@pytest.mark.parametrize("mode", MODES)
def test_small_expected_size_skips_the_probe(mode: str, origin: Origin, conn: HTTPConnection,
                                             tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/small")
    call(mode, conn, "download_file", url, tmp_path / "s.bin", expected_size=SIZE)
    assert ranges_asked(origin, "/small") == [None]
