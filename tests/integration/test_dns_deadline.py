"""The call's deadline bounds DNS on the sync side as on the async side (issue 13, item 4):
a resolver hook or the system ``getaddrinfo`` that takes 3 s does not hold a 1 s call for 3 s."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.origin import Origin
from vllm_fetch import FetchError, FetchTimeoutError, HTTPConnection, RetryPolicy

MODES = ["sync", "async"]
SLOW = 3.0


def timed(mode: str, conn: HTTPConnection, url: str) -> tuple[float, BaseException | None]:
    """Seconds until the call returned (measured inside the event loop on the async side, so
    the executor's shutdown at the end of asyncio.run does not count) and what it raised."""
    async def run() -> tuple[float, BaseException | None]:
        started = time.monotonic()
        try:
            await conn.async_get_bytes(url, timeout=1)
        except FetchError as exc:
            return time.monotonic() - started, exc
        return time.monotonic() - started, None

    if mode == "async":
        return asyncio.run(run())
    started = time.monotonic()
    try:
        conn.get_bytes(url, timeout=1)
    except FetchError as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


class SlowResolver:
    """A resolver hook answering 127.0.0.1 after ``SLOW`` seconds."""

    def __init__(self) -> None:
        self.calls = 0
        self.released = threading.Event()

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        self.released.wait(SLOW)
        return ["127.0.0.1"]


@pytest.fixture
def slow() -> Iterator[SlowResolver]:
    resolver = SlowResolver()
    yield resolver
    resolver.released.set()  # let the abandoned lookups end with the test


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_resolver_hook_is_cut_at_the_deadline(mode: str, origin: Origin,
                                                     slow: SlowResolver) -> None:
    origin.serve_bytes("/x", b"never")
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none(), resolver=slow)
    elapsed, error = timed(mode, conn, f"http://slow.test:{origin.port}/x")
    assert isinstance(error, FetchTimeoutError), error
    assert elapsed < 2.0  # the lookup takes 3 s
    assert slow.calls == 1 and origin.requests == []
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_slow_system_dns_is_cut_at_the_deadline(mode: str, origin: Origin,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a hook or the guard, requests and aiohttp look names up with getaddrinfo:
    stubbed here so that ``slow.test`` answers loopback after 3 s."""
    real: Callable[..., Any] = socket.getaddrinfo
    release = threading.Event()

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow.test":
            release.wait(SLOW)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    origin.serve_bytes("/x", b"never")
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none(), trust_env=False)
    try:
        elapsed, error = timed(mode, conn, f"http://slow.test:{origin.port}/x")
    finally:
        release.set()
    assert isinstance(error, FetchTimeoutError), error
    assert elapsed < 2.0
    assert origin.requests == []
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_quick_lookup_still_connects(mode: str, origin: Origin) -> None:
    origin.serve_bytes("/x", b"fine")
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none(),
                          resolver=lambda host, port: ["127.0.0.1"])
    _, error = timed(mode, conn, f"http://quick.test:{origin.port}/x")
    assert error is None and origin.count("/x") == 1
    conn.close()
