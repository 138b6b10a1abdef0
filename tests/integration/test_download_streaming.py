"""How a download streams to disk: plain sync bodies read into reused buffers (and hashed from
them without copies), writeback started as the file grows, and what that must not change —
truncation detected and resumed from the exact byte, a sha256 mismatch never published, an
interrupted partial taking on disk what was received, not the announced size."""

from __future__ import annotations

import io
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiofiles.threadpool
import pytest

from tests.helpers import call, leftovers
from tests.origin import Origin, sha256
from tests.ranged import RangeFile, ranges_asked
from tests.rawserver import RawServer
from vllm_fetch import ChecksumMismatchError, HTTPConnection, RetryPolicy, TruncatedBodyError, files
from vllm_fetch.cache import fetch_cache
from vllm_fetch.download import partials
from vllm_fetch.drivers.requests_driver import RequestsDriver

MODES = ["sync", "async"]
BODY = os.urandom(3 * 1024 * 1024 + 12_345)  # a dozen 256 KiB reads, the last one short
FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.02)
Serve = Callable[[socket.socket, bytes], None]


@pytest.fixture
def no_chunk_iterator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a sync download reads a plain body through ``iter_body`` (new bytes per chunk)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a plain body went through iter_body")

    monkeypatch.setattr(RequestsDriver, "iter_body", refuse)


def test_a_plain_body_is_read_into_buffers_and_joins_the_cache(
        no_chunk_iterator: None, origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/plain")
    conn = HTTPConnection(cache=tmp_path / "cache")
    first = conn.fetch_file(url, tmp_path / "a.bin", connections=1)
    assert first.sha256 == sha256(BODY) and sha256((tmp_path / "a.bin").read_bytes()) == sha256(
        BODY)
    second = conn.fetch_file(url, tmp_path / "b.bin", connections=1)
    assert second.from_cache and (tmp_path / "b.bin").read_bytes() == BODY
    assert origin.count("/plain") == 1  # the second download sent no request


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cut", [300_001, 256 * 1024, 1])
def test_a_body_cut_mid_read_resumes_from_the_byte_received(
        mode: str, cut: int, origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(BODY, cuts={0: cut}).mount(origin, "/cut")
    conn = HTTPConnection(retry=FAST, cache=tmp_path / "cache")
    target = tmp_path / "out" / "cut.bin"
    call(mode, conn, "download_file", url, target, connections=1,
         expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    asked = ranges_asked(origin, "/cut")
    if mode == "sync":
        assert asked == [None, f"bytes={cut}-"]  # every byte the socket delivered was kept
    else:  # aiohttp drops what it buffered when the loss is seen before the bytes are read
        assert len(asked) == 2 and asked[1] in (None, *(f"bytes={n}-" for n in range(cut + 1)))
    assert leftovers(target.parent) == ["cut.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_a_partial_resumed_by_a_later_call_joins_the_cache_sealed(
        mode: str, origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next call re-reads the partial's bytes once for their sha256 and seal, hashes the
    rest while it streams, and the cache stores the file without reading it again."""
    url = RangeFile(BODY, cuts={0: 1_000_003}).mount(origin, "/later")
    cache = tmp_path / "cache"
    target = tmp_path / "out" / "later.bin"
    with pytest.raises(TruncatedBodyError):
        call(mode, HTTPConnection(retry=RetryPolicy.none(), cache=cache), "download_file", url,
             target, connections=1)
    assert not target.exists()

    def no_second_read(path: Path) -> str:
        raise AssertionError("the stored file was read again for its seal")

    monkeypatch.setattr(fetch_cache, "seal_file", no_second_read)
    conn = HTTPConnection(cache=cache)
    call(mode, conn, "download_file", url, target, connections=1, expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    asked = ranges_asked(origin, "/later")
    assert len(asked) == 2 and asked[1] is not None and asked[1] != "bytes=0-"
    again = conn.fetch_file(url, tmp_path / "again.bin")
    assert again.from_cache and (tmp_path / "again.bin").read_bytes() == BODY
    assert origin.count("/later") == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_cut_without_retries_is_truncation_and_nothing_is_published(
        mode: str, origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(BODY, cuts={0: 300_001}).mount(origin, "/short")
    conn = HTTPConnection(retry=RetryPolicy.none(), cache=False)
    target = tmp_path / "out" / "short.bin"
    with pytest.raises(TruncatedBodyError):
        call(mode, conn, "download_file", url, target, connections=1, resume=False)
    assert not target.parent.exists() or leftovers(target.parent) == []


class _FlippingFile(io.FileIO):
    """aiofiles' file whose first write lands with one byte flipped (a bad disk write)."""

    flipped = False

    def __init__(self, file: Any, mode: str, buffering: int = -1, **kwargs: Any) -> None:
        super().__init__(file, mode.replace("b", ""), opener=kwargs.get("opener"))

    def write(self, data: Any) -> int:
        return super().write(_flip_once(type(self), data))


def _flip_once(owner: Any, data: Any) -> Any:
    if owner.flipped or not len(data):
        return data
    owner.flipped = True
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    return bytes(bad)


@pytest.mark.parametrize("mode", MODES)
def test_the_sha256_is_of_the_bytes_on_disk_not_the_bytes_received(
        mode: str, origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that reached the disk wrong is caught before the rename: the download is
    hashed from the partial, so ``expected_sha256`` vouches for the file that is published
    (and the cache never stores a body whose bytes differ from their name)."""
    url = RangeFile(BODY).mount(origin, "/flip")
    _FlippingFile.flipped = False
    real_pwrite = os.pwrite

    class Sync:
        flipped = False

    def flipping_pwrite(fd: int, data: Any, offset: int) -> int:
        return real_pwrite(fd, _flip_once(Sync, data), offset)

    monkeypatch.setattr(os, "pwrite", flipping_pwrite)
    monkeypatch.setattr(aiofiles.threadpool, "sync_open", _FlippingFile)
    cache = tmp_path / "cache"
    conn = HTTPConnection(retry=RetryPolicy.none(), cache=cache)
    target = tmp_path / "out" / "flip.bin"
    with pytest.raises(ChecksumMismatchError):
        call(mode, conn, "download_file", url, target, connections=1,
             expected_sha256=sha256(BODY))
    assert Sync.flipped or _FlippingFile.flipped  # the bad write happened
    assert not target.exists()
    assert not [p for p in (cache / "blobs").rglob("*") if p.is_file()]


@pytest.mark.parametrize("mode", MODES)
def test_a_sha256_mismatch_with_the_cache_on_never_publishes(
        mode: str, origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/wrong")
    cache = tmp_path / "cache"
    conn = HTTPConnection(retry=FAST, cache=cache)
    target = tmp_path / "out" / "wrong.bin"
    with pytest.raises(ChecksumMismatchError):
        call(mode, conn, "download_file", url, target, connections=1,
             expected_sha256=sha256(b"something else"))
    assert leftovers(target.parent) == []  # no target, no partial kept
    assert not [p for p in (cache / "blobs").rglob("*") if p.is_file()]
    assert origin.count("/wrong") == 1  # a mismatch is not retried


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupted_partial_occupies_what_was_received(
        mode: str, origin: Origin, tmp_path: Path) -> None:
    """Issue 14: 2.4 MB received of 50 MB must not take 50 MB on disk."""
    big = os.urandom(1024 * 1024) * 50
    received = 2_400_000
    url = RangeFile(big, cuts={0: received}).mount(origin, "/big")
    target = tmp_path / "out" / "big.bin"
    with pytest.raises(TruncatedBodyError):
        call(mode, HTTPConnection(retry=RetryPolicy.none(), cache=False), "download_file",
             url, target, connections=1)
    [partial] = [p for p in target.parent.iterdir() if p.name.endswith(".part")]
    info = partial.stat()
    assert info.st_size == received
    assert info.st_blocks * 512 <= received + 1024 * 1024  # not the announced 50 MiB
    call(mode, HTTPConnection(cache=False), "download_file", url, target, connections=1)
    assert sha256(target.read_bytes()) == sha256(big)
    assert ranges_asked(origin, "/big")[-1] == f"bytes={received}-"


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupted_parallel_partial_is_sparse(
        mode: str, origin: Origin, tmp_path: Path) -> None:
    """A split download gives the partial its full size up front, but no blocks: after an
    interruption it holds on disk about what the origin sent, and the next call resumes it."""
    big = os.urandom(1024 * 1024) * 50
    url = RangeFile(big, cuts={0: 2_400_000}, delay=0.005).mount(origin, "/parts")
    target = tmp_path / "out" / "parts.bin"
    with pytest.raises(TruncatedBodyError):
        call(mode, HTTPConnection(retry=RetryPolicy.none(), cache=False), "download_file",
             url, target, connections=4)
    [partial] = [p for p in target.parent.iterdir() if p.name.endswith(".part")]
    info = partial.stat()
    assert info.st_size == len(big)
    assert info.st_blocks * 512 <= origin.bytes_sent + 1024 * 1024 < len(big) // 2
    sent = origin.bytes_sent
    call(mode, HTTPConnection(cache=False), "download_file", url, target, connections=4)
    assert sha256(target.read_bytes()) == sha256(big)
    assert origin.bytes_sent - sent < len(big)  # the parts were resumed, not fetched again


@pytest.mark.parametrize("mode", MODES)
def test_writeback_starts_while_the_file_streams(
        mode: str, origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``WRITEBACK_STEP`` bytes a helper thread asks the kernel to start writing the
    partial, so the fsync before the rename has little left (and it is still made: publish is
    unchanged)."""
    monkeypatch.setattr(partials, "WRITEBACK_STEP", 512 * 1024)
    started: list[tuple[int, str]] = []
    real = files.start_writeback

    def counting(fd: int, offset: int = 0, length: int = 0) -> None:
        started.append((os.fstat(fd).st_size, threading.current_thread().name))
        real(fd, offset, length)

    monkeypatch.setattr(files, "start_writeback", counting)
    url = RangeFile(BODY, delay=0.005).mount(origin, "/wb")  # ~0.3 s for the body
    target = tmp_path / "wb.bin"
    call(mode, HTTPConnection(cache=False), "download_file", url, target, connections=1)
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert started and started[0][0] < len(BODY)  # while it grew, not at the end
    assert {name for _, name in started} == {"vllm_fetch-writeback"}
    assert "vllm_fetch-writeback" not in {t.name for t in threading.enumerate()}  # joined


@pytest.mark.parametrize("mode", MODES)
def test_a_stall_mid_body_is_an_idle_timeout_then_resumed(
        mode: str, origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(BODY, stalls={0: 1_000_000}, stall_seconds=5).mount(origin, "/stall")
    conn = HTTPConnection(retry=FAST, cache=False, idle_timeout=0.3)
    target = tmp_path / "stall.bin"
    call(mode, conn, "download_file", url, target, connections=1)
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert ranges_asked(origin, "/stall") == [None, "bytes=1000000-"]


def _reset_after(sent: int) -> Serve:
    """First connection: the head and ``sent`` bytes, then a TCP reset; later ones: ranges."""
    calls: list[bytes] = []

    def handler(sock: socket.socket, head: bytes) -> None:
        calls.append(head)
        match = re.search(rb"\r\nRange: bytes=(\d+)-", head, re.IGNORECASE)
        start = int(match[1]) if match else 0
        status = b"206 Partial Content" if start else b"200 OK"
        extra = b"Content-Range: bytes %d-%d/%d\r\n" % (start, len(BODY) - 1, len(BODY)) \
            if start else b""
        sock.sendall(b"HTTP/1.1 " + status + b"\r\nETag: \"v1\"\r\nContent-Length: %d\r\n"
                     % (len(BODY) - start) + extra + b"\r\n")
        if len(calls) == 1:
            sock.sendall(BODY[:sent])
            time.sleep(0.05)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # closed with linger 0: a reset
        sock.sendall(BODY[start:])

    return handler


@pytest.mark.parametrize("mode", MODES)
def test_a_reset_mid_body_is_truncation_then_resumed(mode: str, tmp_path: Path) -> None:
    server = RawServer(_reset_after(500_000))
    try:
        with pytest.raises(TruncatedBodyError):
            call(mode, HTTPConnection(retry=RetryPolicy.none(), cache=False), "download_file",
                 server.url("/r"), tmp_path / "r.bin", connections=1)
        call(mode, HTTPConnection(retry=FAST, cache=False), "download_file", server.url("/r"),
             tmp_path / "r.bin", connections=1, expected_sha256=sha256(BODY))
    finally:
        server.close()
    assert sha256((tmp_path / "r.bin").read_bytes()) == sha256(BODY)
    assert leftovers(tmp_path) == ["r.bin"]
