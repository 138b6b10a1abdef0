"""Framing faults (F2, F3, F5) and a trickling origin (F12) against a raw loopback server, for
every body method, sync and async."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import call, leftovers
from tests.origin import sha256
from tests.rawserver import RawServer
from vllm_fetch import (
    ChecksumMismatchError,
    FetchTimeoutError,
    HTTPConnection,
    ResponseHeadersError,
    RetryPolicy,
    TruncatedBodyError,
)

MODES = ["sync", "async"]
METHODS = ["get_bytes", "download_file"]
BODY = os.urandom(100_000)
HALF = len(BODY) // 2
FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.02)

Serve = Callable[[socket.socket, bytes], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Serve], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Serve) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def fetch(mode: str, conn: HTTPConnection, method: str, url: str, tmp_path: Path,
          **kwargs: Any) -> bytes:
    if method == "download_file":
        return Path(call(mode, conn, method, url, tmp_path / "out.bin", **kwargs)).read_bytes()
    data: bytes = call(mode, conn, method, url, **kwargs)
    return data


def then_good(first: Serve) -> Serve:
    """``first`` for the first connection, a correct response for every later one."""
    served = []

    def handler(sock: socket.socket, head: bytes) -> None:
        served.append(head)
        if len(served) == 1:
            first(sock, head)
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)

    return handler


# --- F2: a chunked body cut mid-chunk ----------------------------------------------------------


def chunk_cut_mid(sock: socket.socket, head: bytes) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % len(BODY) + BODY[:HALF])


def chunk_cut_between(sock: socket.socket, head: bytes) -> None:
    """Whole chunks, but never the terminating zero-size chunk."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % HALF + BODY[:HALF] + b"\r\n")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cut", [chunk_cut_mid, chunk_cut_between], ids=["mid", "between"])
def test_f2_cut_chunked_body_is_truncation_then_retried(
    mode: str, method: str, cut: Serve, serve: Callable[[Serve], RawServer], tmp_path: Path
) -> None:
    broken = serve(cut)
    with pytest.raises(TruncatedBodyError):
        fetch(mode, HTTPConnection(retry=RetryPolicy.none(), cache=False), method,
              broken.url("/c"), tmp_path)
    assert leftovers(tmp_path) == []
    flaky = serve(then_good(cut))
    got = fetch(mode, HTTPConnection(retry=FAST, cache=False), method, flaky.url("/c"), tmp_path)
    assert sha256(got) == sha256(BODY) and len(flaky.heads) == 2


# --- F3: no length, the connection closes early ------------------------------------------------


def no_length_short(sock: socket.socket, head: bytes) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY[:HALF])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_f3_without_expectations_the_body_is_what_arrived(
    mode: str, method: str, serve: Callable[[Serve], RawServer], tmp_path: Path
) -> None:
    server = serve(no_length_short)
    got = fetch(mode, HTTPConnection(retry=RetryPolicy.none(), cache=False), method,
                server.url("/n"), tmp_path)
    assert got == BODY[:HALF]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("expect", "error"), [
    ({"expected_size": len(BODY)}, TruncatedBodyError),
    ({"expected_sha256": sha256(BODY)}, ChecksumMismatchError),
], ids=["size", "sha256"])
def test_f3_with_a_known_size_or_sha256_a_short_body_is_refused(
    mode: str, expect: dict[str, Any], error: type[Exception],
    serve: Callable[[Serve], RawServer], tmp_path: Path
) -> None:
    server = serve(no_length_short)
    with pytest.raises(error):
        fetch(mode, HTTPConnection(retry=RetryPolicy.none()), "download_file", server.url("/n"),
              tmp_path, **expect)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
def test_f3_a_short_body_against_a_known_size_is_resumed_from_where_it_ended(
    mode: str, serve: Callable[[Serve], RawServer], tmp_path: Path
) -> None:
    """No length on the wire: a clean close short of ``expected_size`` may be a dropped
    connection, so it is a truncation, and the retry asks for the rest with ``Range``."""
    def short_then_rest(sock: socket.socket, head: bytes) -> None:
        if b"range: bytes=" in head.lower():  # If-Range "v1" matches: the rest
            sock.sendall(b"HTTP/1.1 206 Partial Content\r\nETag: \"v1\"\r\n"
                         b"Content-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n"
                         % (HALF, len(BODY) - 1, len(BODY), len(BODY) - HALF) + BODY[HALF:])
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n"
                         + BODY[:HALF])

    server = serve(short_then_rest)
    got = fetch(mode, HTTPConnection(retry=FAST, cache=False), "download_file",
                server.url("/n"), tmp_path, expected_size=len(BODY))
    assert sha256(got) == sha256(BODY)
    assert len(server.heads) == 2 and b"bytes=%d-" % HALF in server.heads[1].lower()
    assert leftovers(tmp_path) == ["out.bin"]


# --- F5: conflicting or garbage Content-Length ---------------------------------------------------

BAD_LENGTHS = {
    "garbage": b"Content-Length: abc\r\n",
    "negative": b"Content-Length: -5\r\n",
    "two-values": b"Content-Length: 1000\r\nContent-Length: 500\r\n",
    "list": b"Content-Length: 1000, 500\r\n",
    "with-chunked": b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fields", list(BAD_LENGTHS.values()), ids=list(BAD_LENGTHS))
def test_f5_bad_content_length_is_a_typed_error_tried_once(
    mode: str, method: str, fields: bytes, serve: Callable[[Serve], RawServer], tmp_path: Path
) -> None:
    def handler(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\n" + fields + b"Connection: close\r\n\r\n"
                     + b"5\r\nhello\r\n0\r\n\r\n")

    server = serve(handler)
    with pytest.raises(ResponseHeadersError):
        fetch(mode, HTTPConnection(retry=FAST, cache=False), method, server.url("/l"), tmp_path)
    assert len(server.heads) == 1  # no retry storm
    assert leftovers(tmp_path) == []


# --- F12: a byte just under the idle timeout, forever ---------------------------------------------


def trickle_body(sock: socket.socket, head: bytes) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(50):
        sock.sendall(b"x")
        time.sleep(0.1)


def trickle_head(sock: socket.socket, head: bytes) -> None:
    """The status line and headers themselves, a byte at a time (slowloris, client side)."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 40 + b"\r\nContent-Length: 2\r\n\r\nok":
        sock.sendall(bytes([byte]))
        time.sleep(0.1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("handler", [trickle_body, trickle_head], ids=["body", "head"])
def test_f12_trickle_is_ended_by_the_total_deadline(
    mode: str, method: str, handler: Serve, serve: Callable[[Serve], RawServer], tmp_path: Path
) -> None:
    server = serve(handler)
    conn = HTTPConnection(retry=FAST, cache=False, idle_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(FetchTimeoutError) as info:
        fetch(mode, conn, method, server.url("/t"), tmp_path, timeout=0.6)
    assert time.monotonic() - started < 2.0  # the head alone would take 7 s to arrive
    assert "timed out after 0.6 s" in str(info.value)
    assert leftovers(tmp_path) == []


# --- S7: the HTTP libraries' own logs -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head", [b"Content-Length: 2\r\n", b"Content-Length: 2\r\n: nameless\r\n"],
                         ids=["plain", "malformed-field"])
def test_s7_library_logs_carry_no_query_string(
    mode: str, head: bytes, serve: Callable[[Serve], RawServer],
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """urllib3 logs every request target at DEBUG and a URL for a malformed head at WARNING."""
    server = serve(lambda sock, _: sock.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"\r\nok"))
    caplog.set_level(logging.DEBUG)  # the root: every library's records
    url = server.url("/x?X-Amz-Signature=SIGSECRET")
    with contextlib.suppress(ResponseHeadersError):  # aiohttp refuses a nameless field
        fetch(mode, HTTPConnection(retry=RetryPolicy.none(), cache=False), "get_bytes", url,
              tmp_path)
    assert len(server.heads) == 1 and b"SIGSECRET" in server.heads[0]  # sent verbatim ...
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "SIGSECRET" in m]  # ... and logged nowhere
