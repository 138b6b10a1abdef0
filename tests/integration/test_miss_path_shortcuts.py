"""The cache-off async miss path's shortcuts keep what they replaced: the headers on the wire,
the final URL of a result, redacted messages from the meter, and a netrc that appears."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from aiohttp import web

from tests.origin import Origin
from vllm_fetch import FetchError, HTTPConnection, RetryPolicy
from vllm_fetch._version import DEFAULT_USER_AGENT
from vllm_fetch.errors import HTTPResponseSizeExceededError, HTTPStatusError

SECRET = "s3cr3t-token"


def _conn(**kwargs: object) -> HTTPConnection:
    return HTTPConnection(cache=False, retry=RetryPolicy.none(), **kwargs)  # type: ignore[arg-type]


def test_headers_on_the_wire_plain_and_with_the_callers(origin: Origin) -> None:
    url = origin.serve_bytes("/h", b"body")

    async def run() -> None:
        async with _conn() as conn:
            assert await conn.async_get_bytes(url) == b"body"
            assert await conn.async_get_bytes(
                url, extra_headers={"user-agent": "custom/1", "X-Trace": "t1"}) == b"body"
        async with _conn(user_agent="mine/2") as conn:
            assert await conn.async_get_bytes(url) == b"body"

    asyncio.run(run())
    plain, extra, own = (seen.headers for seen in origin.requests)
    assert plain["User-Agent"] == DEFAULT_USER_AGENT
    assert plain["Accept-Encoding"] == "identity"
    assert "X-Trace" not in plain
    assert extra["User-Agent"] == "custom/1"
    assert extra["X-Trace"] == "t1"
    assert extra["Accept-Encoding"] == "identity"
    assert own["User-Agent"] == "mine/2"
    assert own["Accept-Encoding"] == "identity"


def test_a_result_url_is_the_final_url_as_a_string(origin: Origin) -> None:
    final = origin.serve_bytes("/to", b"there")

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/to")

    start = origin.route("/from", moved)

    async def run() -> None:
        async with _conn() as conn:
            redirected = await conn.async_fetch_bytes(start)
            direct = await conn.async_fetch_bytes(final)
            assert type(redirected.url) is str and redirected.url == final
            assert type(direct.url) is str and direct.url == final
            assert redirected.content == direct.content == b"there"
            assert redirected == direct
            assert final in repr(direct)

    asyncio.run(run())


def test_the_meters_errors_name_the_url_redacted(origin: Origin) -> None:
    big = origin.serve_bytes("/big", b"x" * 5000)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await response.prepare(request)
        for _ in range(50):
            await response.write(b"y" * 1000)
        await response.write_eof()
        return response

    chunked = origin.route("/chunked", endless)
    missing = origin.url("/missing")

    async def run() -> list[FetchError]:
        errors: list[FetchError] = []
        async with _conn() as conn:
            for url, kind in ((big, HTTPResponseSizeExceededError),
                              (chunked, HTTPResponseSizeExceededError),
                              (missing, HTTPStatusError)):
                with pytest.raises(kind) as caught:
                    await conn.async_get_bytes(f"{url}?token={SECRET}", max_bytes=1000)
                errors.append(caught.value)
        return errors

    for error in asyncio.run(run()):
        assert SECRET not in str(error)
        assert error.url is not None and SECRET not in error.url
        assert error.url.startswith(origin.url("/"))


def test_a_netrc_that_appears_is_used_by_the_next_request(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    url = origin.serve_bytes("/n", b"ok")

    async def run() -> None:
        async with _conn(trust_env=True) as conn:
            await conn.async_get_bytes(url)
            netrc.write_text(f"machine {origin.host} login alice password wonder\n")
            await conn.async_get_bytes(url)
            netrc.unlink()
            await conn.async_get_bytes(url)

    asyncio.run(run())
    before, during, after = (seen.headers.get("Authorization") for seen in origin.requests)
    assert before is None
    assert during == "Basic " + base64.b64encode(b"alice:wonder").decode()
    assert after is None
