"""Size limits (fault matrix F15-F17, F20) against a raw loopback server, sync and async."""

from __future__ import annotations

import socket
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import call, leftovers
from tests.origin import Origin
from tests.rawserver import RawServer
from vllm_fetch import (
    HTTPConnection,
    ResponseHeadersError,
    RetryPolicy,
    SizeLimitExceededError,
)

MODES = ["sync", "async"]
LIMIT = 64 * 1024
CHUNK = b"x" * 65536


def vllm_message(max_bytes: int, received: int, url: str) -> str:
    """vLLM 0.33's str() of its HTTPResponseSizeExceededError, then vllm_fetch's URL."""
    return ("Maximum file size exceeded: HTTP response exceeded maximum size of "
            f"{max_bytes} bytes (received at least {received} bytes) "
            f"(parameter=audio_filesize_mb, value={received / (1 << 20)}) from {url}")


@pytest.fixture
def conn() -> HTTPConnection:
    return HTTPConnection(retry=RetryPolicy.none())


def endless(conn: socket.socket, server: RawServer, head: bytes, cap: int = 256 << 20) -> None:
    """Send ``head``, then body bytes until the client hangs up (or ``cap`` bytes: a bug)."""
    conn.sendall(head)
    while server.bytes_sent < cap:
        conn.sendall(CHUNK)
        server.sent(len(CHUNK))


@pytest.fixture
def huge_length() -> Iterator[RawServer]:
    """Announces 10 GB and streams until the client goes away."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n"
    server = RawServer(lambda c, _h: endless(c, server, head))
    yield server
    server.close()


@pytest.fixture
def no_length() -> Iterator[RawServer]:
    """No Content-Length, no chunking: a body that ends only when the connection does."""
    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    server = RawServer(lambda c, _h: endless(c, server, head))
    yield server
    server.close()


@pytest.mark.parametrize("mode", MODES)
def test_f15_content_length_over_cap_refused_before_reading(
    mode: str, huge_length: RawServer, conn: HTTPConnection
) -> None:
    with pytest.raises(SizeLimitExceededError) as info:
        call(mode, conn, "get_bytes", huge_length.url("/big"), max_bytes=LIMIT)
    assert str(info.value) == vllm_message(LIMIT, 10_000_000_000, huge_length.url("/big"))
    assert len(huge_length.heads) == 1  # not retried
    # the body was never read: what the server managed to push fits in socket buffers
    assert huge_length.bytes_sent < 64 << 20


@pytest.mark.parametrize("mode", MODES)
def test_f15_connection_max_bytes_applies_to_every_method(
    mode: str, origin: Origin, tmp_path: Path
) -> None:
    url = origin.serve_bytes("/blob", b"y" * (LIMIT + 1))
    small = origin.serve_bytes("/small", b"y" * LIMIT)
    conn = HTTPConnection(retry=RetryPolicy.none(), max_bytes=LIMIT)
    for name in ("get_bytes", "get_text", "get_json"):
        with pytest.raises(SizeLimitExceededError):
            call(mode, conn, name, url)
    with pytest.raises(SizeLimitExceededError):
        call(mode, conn, "download_file", url, tmp_path / "out")
    assert leftovers(tmp_path) == []
    assert len(call(mode, conn, "get_bytes", small)) == LIMIT
    # a per-call max_bytes overrides the connection's
    assert len(call(mode, conn, "get_bytes", url, max_bytes=LIMIT + 1)) == LIMIT + 1


@pytest.mark.parametrize("mode", MODES)
def test_f16_endless_body_stops_past_cap(
    mode: str, no_length: RawServer, conn: HTTPConnection, tmp_path: Path
) -> None:
    with pytest.raises(SizeLimitExceededError) as info:
        call(mode, conn, "get_bytes", no_length.url("/endless"), max_bytes=LIMIT)
    assert no_length.bytes_sent < 64 << 20
    received = info.value.received_bytes  # type: ignore[attr-defined]
    # F16 on both sides: refused at the first byte past the cap, whatever aiohttp had buffered
    assert received == LIMIT + 1
    assert str(info.value) == vllm_message(LIMIT, received, no_length.url("/endless"))
    limited = HTTPConnection(retry=RetryPolicy.none(), max_bytes=LIMIT)
    with pytest.raises(SizeLimitExceededError):
        call(mode, limited, "download_file", no_length.url("/endless"), tmp_path / "t")
    assert leftovers(tmp_path) == []


def gzip_bomb(decoded: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(decoded >> 20)]
    return b"".join(parts) + compressor.flush()


BOMB_DECODED = 512 << 20
BOMB = gzip_bomb(BOMB_DECODED)  # about 500 KiB on the wire, 512 MiB decoded


@pytest.mark.parametrize("mode", MODES)
def test_f17_gzip_bomb_stops_at_cap_with_bounded_memory(mode: str, conn: HTTPConnection) -> None:
    def handler(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(BOMB) + BOMB)

    server = RawServer(handler)
    limit = 1 << 20
    try:
        tracemalloc.start()
        try:
            with pytest.raises(SizeLimitExceededError):
                call(mode, conn, "get_bytes", server.url("/bomb"), max_bytes=limit)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert b"accept-encoding: identity" in server.heads[0].lower()
    finally:
        server.close()
    # generous: the cap plus a few decoder/read buffers, far below the 512 MiB decoded size
    assert peak < 48 << 20, f"peak traced memory {peak / 2**20:.1f} MiB"


def many_headers(sock: socket.socket, head: bytes) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
                 + b"Content-Length: 2\r\n\r\nok")


def huge_header_line(sock: socket.socket, head: bytes) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (256 * 1024) + b"\r\n"
                 b"Content-Length: 2\r\n\r\nok")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("handler", [many_headers, huge_header_line],
                         ids=["500-headers", "256KiB-line"])
def test_f20_header_bombs_are_typed_errors(mode: str, handler: object,
                                          conn: HTTPConnection) -> None:
    server = RawServer(handler)  # type: ignore[arg-type]
    retrying = HTTPConnection(retry=RetryPolicy(max_attempts=3, backoff_base=0))
    try:
        with pytest.raises(ResponseHeadersError):
            call(mode, conn, "get_bytes", server.url("/h"))
        with pytest.raises(ResponseHeadersError):
            call(mode, retrying, "get_bytes", server.url("/h"))
        assert len(server.heads) == 2  # a malformed response is not retried
    finally:
        server.close()


def test_threads_stay_few() -> None:
    assert threading.active_count() < 50
