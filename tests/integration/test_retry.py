"""Retry policies against a real loopback origin, sync and async: issue 3's "Done when" list."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.helpers import call, leftovers
from tests.origin import Origin, cut_after, sha256
from vllm_fetch import (
    ChecksumMismatchError,
    FetchConnectionError,
    FetchTimeoutError,
    HTTPConnection,
    HTTPStatusError,
    RetryPolicy,
    SizeLimitExceededError,
    TruncatedBodyError,
)

MODES = ["sync", "async"]
METHODS = ["get_bytes", "get_text", "get_json", "download_file"]
DOC = {"weights": list(range(2000)), "name": "café"}
BODY = json.dumps(DOC).encode()
#: Three attempts, backoff waits of at most 10-40 ms: fast, but real sleeps through tenacity.
FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.04)

Step = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Script:
    """Answers the n-th request with the n-th step (the last repeats), noting when each came,
    as the origin saw it (monotonic and wall-clock time)."""

    steps: list[Step]
    arrived: list[float] = field(default_factory=list)
    arrived_wall: list[float] = field(default_factory=list)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.arrived.append(time.monotonic())
        self.arrived_wall.append(time.time())
        step = self.steps[min(len(self.arrived), len(self.steps)) - 1]
        return await step(request)

    def gap(self, n: int = 1) -> float:
        """Seconds between request n and request n + 1 (0-based), on the origin's clock."""
        return self.arrived[n] - self.arrived[n - 1]


def answer(code: int, headers: dict[str, str] | None = None) -> Step:
    async def step(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=f"status {code}", headers=headers or {})
    return step


def ok(body: bytes = BODY) -> Step:
    async def step(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json", charset="utf-8")
    return step


def cut(body: bytes = BODY) -> Step:
    async def step(request: web.Request) -> web.StreamResponse:
        return await cut_after(request, body, len(body) // 2)
    return step


def hang(seconds: float = 30.0) -> Step:
    """Accept, then send nothing until the client goes away (or ``seconds`` pass)."""
    async def step(request: web.Request) -> web.StreamResponse:
        give_up = time.monotonic() + seconds
        while time.monotonic() < give_up:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(0.02)
        return web.Response(body=b"too late")
    return step


def stall_midway(body: bytes = BODY, seconds: float = 30.0) -> Step:
    """Announce the full length, send half, then nothing until the client goes away."""
    async def step(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        return await hang(seconds)(request)
    return step


def script(origin: Origin, path: str, *steps: Step) -> tuple[str, Script]:
    scripted = Script(list(steps))
    return origin.route(path, scripted), scripted


def fetched(mode: str, conn: HTTPConnection, method: str, url: str, tmp_path: Path,
            **kwargs: Any) -> bytes:
    """What the caller got, as bytes, whatever the method."""
    if method == "download_file":
        target = tmp_path / "out.json"
        assert call(mode, conn, method, url, target, **kwargs) == target
        return target.read_bytes()
    got = call(mode, conn, method, url, **kwargs)
    if method == "get_text":
        return str(got).encode()
    if method == "get_json":
        return json.dumps(got).encode()
    return bytes(got)


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "vllm_fetch" and r.levelno == logging.WARNING]


# -- transient statuses ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_two_503_then_200_takes_exactly_three_requests(mode: str, method: str, origin: Origin,
                                                       tmp_path: Path) -> None:
    url, flaky = script(origin, "/flaky", answer(503), answer(503), ok())
    got = fetched(mode, HTTPConnection(retry=FAST), method, url, tmp_path)
    assert sha256(got) == sha256(BODY)
    assert len(flaky.arrived) == 3
    assert leftovers(tmp_path) == (["out.json"] if method == "download_file" else [])


@pytest.mark.parametrize("mode", MODES)
def test_429_retry_after_seconds_is_waited(mode: str, origin: Origin) -> None:
    url, limited = script(origin, "/limited", answer(429, {"Retry-After": "2"}), ok())
    assert call(mode, HTTPConnection(retry=FAST), "get_bytes", url) == BODY
    assert len(limited.arrived) == 2
    assert 2.0 <= limited.gap() < 10.0


@pytest.mark.parametrize("mode", MODES)
def test_retry_after_http_date_is_waited(mode: str, origin: Origin) -> None:
    not_before = math.ceil(time.time()) + 1  # HTTP-dates have whole seconds: 1-2 s ahead
    when = formatdate(not_before, usegmt=True)
    url, busy = script(origin, "/busy", answer(503, {"Retry-After": when}), ok())
    assert call(mode, HTTPConnection(retry=FAST), "get_bytes", url) == BODY
    assert len(busy.arrived) == 2
    assert busy.arrived_wall[1] >= not_before - 0.01  # 10 ms of clock granularity, no more
    assert busy.gap() >= 0.5  # a date 1-2 s ahead, not the 40 ms backoff


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("retry_after", ["86400", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_absurd_retry_after_is_capped(mode: str, retry_after: str, origin: Origin) -> None:
    policy = FAST.replace(retry_after_max=0.3)
    url, slow = script(origin, "/slowdown", answer(503, {"Retry-After": retry_after}), ok())
    started = time.monotonic()
    assert call(mode, HTTPConnection(retry=policy), "get_bytes", url, timeout=10) == BODY
    assert time.monotonic() - started < 5.0
    assert len(slow.arrived) == 2 and 0.3 <= slow.gap() < 5.0


@pytest.mark.parametrize("mode", MODES)
def test_retry_after_beyond_the_deadline_gives_up_at_once(mode: str, origin: Origin) -> None:
    url, busy = script(origin, "/later", answer(503, {"Retry-After": "30"}))
    started = time.monotonic()
    with pytest.raises(HTTPStatusError) as info:
        call(mode, HTTPConnection(retry=FAST), "get_bytes", url, timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert info.value.status == 503 and len(busy.arrived) == 1


# -- never retried -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["get_bytes", "download_file"])
@pytest.mark.parametrize("code", [400, 403, 404])
def test_client_errors_are_not_retried(mode: str, method: str, code: int, origin: Origin,
                                       tmp_path: Path) -> None:
    url, missing = script(origin, "/missing", answer(code), ok())
    with pytest.raises(HTTPStatusError) as info:
        fetched(mode, HTTPConnection(retry=RetryPolicy()), method, url, tmp_path)
    assert info.value.status == code
    assert len(missing.arrived) == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
def test_checksum_mismatch_is_not_retried(mode: str, origin: Origin, tmp_path: Path) -> None:
    url, blob = script(origin, "/blob", ok())
    with pytest.raises(ChecksumMismatchError):
        call(mode, HTTPConnection(retry=FAST), "download_file", url, tmp_path / "out",
             expected_sha256=hashlib.sha256(b"other").hexdigest())
    assert len(blob.arrived) == 1 and leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
def test_size_cap_is_not_retried(mode: str, origin: Origin) -> None:
    url, blob = script(origin, "/big", ok())
    with pytest.raises(SizeLimitExceededError):
        call(mode, HTTPConnection(retry=FAST), "get_bytes", url, max_bytes=100)
    assert len(blob.arrived) == 1


# -- connection faults ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_connection_refused_is_retried_then_typed(mode: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/weights.bin"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"), \
            pytest.raises(FetchConnectionError) as info:
        call(mode, HTTPConnection(retry=FAST), "get_bytes", url, timeout=5.0)
    assert time.monotonic() - started < 5.0
    assert info.value.attempts == 3 and "after 3 attempts" in str(info.value)
    # the library's own error stays attached; as __context__ only, since its message may
    # quote the full URL (S7: the drivers raise ``from None``)
    underlying = info.value.__cause__ or info.value.__context__
    assert underlying is not None and not isinstance(underlying, FetchConnectionError)
    assert len(retry_warnings(caplog)) == 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["get_bytes", "download_file"])
def test_body_cut_midway_is_retried(mode: str, method: str, origin: Origin,
                                    tmp_path: Path) -> None:
    url, flaky = script(origin, "/cut", cut(), ok())
    got = fetched(mode, HTTPConnection(retry=FAST), method, url, tmp_path)
    assert sha256(got) == sha256(BODY)
    assert len(flaky.arrived) == 2
    assert leftovers(tmp_path) == (["out.json"] if method == "download_file" else [])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["get_bytes", "download_file"])
@pytest.mark.parametrize("first", [hang, stall_midway], ids=["no-headers", "stall-mid-body"])
def test_an_idle_stall_is_retried(mode: str, method: str, first: Callable[[], Step],
                                  origin: Origin, tmp_path: Path) -> None:
    url, stalls = script(origin, "/stall", first(), ok())
    conn = HTTPConnection(retry=FAST, idle_timeout=0.3)
    got = fetched(mode, conn, method, url, tmp_path, timeout=10)
    assert sha256(got) == sha256(BODY)
    # the origin clocks an arrival when its handler runs, which under load can be later than
    # the client's send that started the 0.3 s idle timer; a retry without that timer would
    # follow within the 0.04 s backoff
    assert len(stalls.arrived) == 2 and stalls.gap() >= 0.2
    assert leftovers(tmp_path) == (["out.json"] if method == "download_file" else [])


@pytest.mark.parametrize("mode", MODES)
def test_body_always_cut_fails_after_every_attempt(mode: str, origin: Origin,
                                                   tmp_path: Path) -> None:
    url, broken = script(origin, "/cut", cut())
    with pytest.raises(TruncatedBodyError) as info:
        call(mode, HTTPConnection(retry=FAST), "download_file", url, tmp_path / "out")
    assert len(broken.arrived) == 3 and info.value.attempts == 3
    assert "after 3 attempts" in str(info.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["get_bytes", "download_file"])
def test_silent_origin_is_ended_by_the_total_deadline(mode: str, method: str, origin: Origin,
                                                      tmp_path: Path) -> None:
    url, silent = script(origin, "/silent", hang())
    conn = HTTPConnection(retry=RetryPolicy(max_attempts=10, backoff_base=0.01))
    started = time.monotonic()
    with pytest.raises(FetchTimeoutError) as info:
        fetched(mode, conn, method, url, tmp_path, timeout=0.5)
    assert time.monotonic() - started < 2.0  # idle timeout is 30 s: only the deadline did it
    assert type(info.value) is FetchTimeoutError  # not an "idle timeout": that is 30 s
    assert str(info.value).startswith(f"timed out after 0.5 s fetching {url}")
    assert info.value.__cause__ is not None
    assert 1 <= len(silent.arrived) <= 10
    assert leftovers(tmp_path) == []


# -- get_response / get_async_response ------------------------------------------------------
def get_status(mode: str, conn: HTTPConnection, url: str) -> tuple[int, bytes]:
    if mode == "sync":
        response = conn.get_response(url)
        with response:
            return response.status_code, response.content

    async def run() -> tuple[int, bytes]:
        async with conn, await conn.get_async_response(url) as response:
            return response.status, await response.read()

    return asyncio.run(run())


@pytest.mark.parametrize("mode", MODES)
def test_get_response_retries_until_a_good_status(mode: str, origin: Origin) -> None:
    url, flaky = script(origin, "/flaky", answer(503), answer(502), ok())
    with HTTPConnection(retry=FAST) as conn:
        assert get_status(mode, conn, url) == (200, BODY)
    assert len(flaky.arrived) == 3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("policy", "requests"), [(FAST, 3), (RetryPolicy.none(), 1)])
def test_get_response_returns_the_last_status_when_retries_run_out(
    mode: str, policy: RetryPolicy, requests: int, origin: Origin,
) -> None:
    url, down = script(origin, "/down", answer(503))
    with HTTPConnection(retry=policy) as conn:
        assert get_status(mode, conn, url) == (503, b"status 503")
    assert len(down.arrived) == requests


# -- visibility ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_each_retry_logs_one_warning(mode: str, origin: Origin,
                                     caplog: pytest.LogCaptureFixture) -> None:
    url, _ = script(origin, "/flaky", answer(503), answer(503), ok())
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        call(mode, HTTPConnection(retry=FAST), "get_bytes", url + "?X-Amz-Signature=s3cr3t")
    lines = retry_warnings(caplog)
    assert len(lines) == 2
    for n, line in enumerate(lines, start=1):
        assert line.startswith(f"GET {origin.url('/flaky')}?…: attempt {n}/3 failed (")
        assert "HTTP 503" in line and "retrying in 0.0" in line
        assert "s3cr3t" not in line


@pytest.mark.parametrize("mode", MODES)
def test_final_error_says_how_many_attempts(mode: str, origin: Origin) -> None:
    url, down = script(origin, "/down", answer(503))
    with pytest.raises(HTTPStatusError) as info:
        call(mode, HTTPConnection(retry=FAST), "get_bytes", url)
    assert info.value.status == 503 and info.value.attempts == 3
    assert str(info.value).endswith("(after 3 attempts)")
    assert len(down.arrived) == 3


# -- the deadline and cancellation during backoff ----------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_backoff_waits_count_against_the_deadline(mode: str, origin: Origin) -> None:
    url, busy = script(origin, "/busy", answer(503, {"Retry-After": "1"}))
    started = time.monotonic()
    with pytest.raises(HTTPStatusError) as info:
        call(mode, HTTPConnection(retry=RetryPolicy(backoff_base=0.01)), "get_bytes", url,
             timeout=1.6)
    elapsed = time.monotonic() - started
    # waited 1 s once; a second 1 s wait would end past the 1.6 s deadline, so it gave up
    assert len(busy.arrived) == 2 and busy.gap() >= 1.0
    assert 1.0 <= elapsed < 1.6
    assert info.value.attempts == 2


def test_cancelling_during_a_retry_wait_leaves_nothing(origin: Origin, tmp_path: Path) -> None:
    url, busy = script(origin, "/busy", answer(503, {"Retry-After": "30"}))

    async def main() -> float:
        async with HTTPConnection(retry=RetryPolicy()) as conn:
            task = asyncio.create_task(conn.async_download_file(url, tmp_path / "out"))
            while not busy.arrived:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # now inside the 30 s Retry-After wait
            cancelled = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - cancelled

    assert asyncio.run(main()) < 1.0
    assert len(busy.arrived) == 1
    assert leftovers(tmp_path) == []
