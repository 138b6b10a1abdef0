"""What vLLM 0.33's callers rely on, against a real origin, sync and async: exception types,
the media download limit, the per-request budget, quoted spaces (issue 11)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from tests.helpers import call
from tests.origin import Origin, cut_after
from vllm_fetch import HTTPConnection, RetryPolicy
from vllm_fetch.core.media_limits import MediaRequestDownloadBudget
from vllm_fetch.errors import (
    FetchConnectionError,
    FetchError,
    FetchTimeoutError,
    HTTPResponseSizeExceededError,
    HTTPStatusError,
    InvalidURLError,
    MediaDownloadSizeExceededError,
    MediaRequestDownloadSizeExceededError,
    TooManyRedirectsError,
    TruncatedBodyError,
)

MODES = ["sync", "async"]
MiB = 1 << 20
FAST = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.01)


def conn(**kwargs: Any) -> HTTPConnection:
    kwargs.setdefault("cache", False)
    kwargs.setdefault("retry", FAST)
    return HTTPConnection(**kwargs)


def failure(mode: str, c: HTTPConnection, url: str, **kwargs: Any) -> BaseException:
    with pytest.raises(FetchError) as info:
        call(mode, c, "get_bytes", url, **kwargs)
    assert "secret" not in str(info.value) and "secret" not in repr(info.value)
    return info.value


def with_secrets(url: str) -> str:
    return url.replace("http://", "http://user:secret@") + "?token=secret"


# -- exception types ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("status", [404, 500])
def test_status_errors_are_the_libraries_status_errors(
        origin: Origin, mode: str, status: int) -> None:
    url = origin.serve_bytes("/img.png", b"nope", status=status)
    error = failure(mode, conn(), with_secrets(url))
    assert isinstance(error, HTTPStatusError) and error.status == status
    assert isinstance(error, requests.HTTPError)
    assert error.response is not None and error.response.status_code == status
    assert "secret" not in (error.response.url or "")
    if mode == "async":
        assert isinstance(error, aiohttp.ClientResponseError) and error.status == status
        assert "secret" not in str(error.request_info.real_url)
    assert origin.count("/img.png") == (2 if status == 500 else 1)  # 5xx retried, 404 not


@pytest.mark.parametrize("mode", MODES)
def test_redirect_loops_are_too_many_redirects(origin: Origin, mode: str) -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")

    url = origin.route("/loop", loop)
    error = failure(mode, conn(max_redirects=3), with_secrets(url))
    assert isinstance(error, TooManyRedirectsError)
    expected = aiohttp.TooManyRedirects if mode == "async" else requests.TooManyRedirects
    assert isinstance(error, expected)
    assert origin.count("/loop") == 4


@pytest.mark.parametrize("mode", MODES)
def test_timeouts_are_the_libraries_timeouts(origin: Origin, mode: str) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(body=b"late")

    url = origin.route("/stall", stall)
    error = failure(mode, conn(), with_secrets(url), timeout=0.4)
    assert isinstance(error, FetchTimeoutError) and isinstance(error, TimeoutError)
    if mode == "sync":
        assert isinstance(error, requests.Timeout)


@pytest.mark.parametrize("mode", MODES)
def test_refused_connections_are_the_libraries_connection_errors(mode: str) -> None:
    error = failure(mode, conn(), with_secrets(f"http://127.0.0.1:{_closed_port()}/a.png"))
    assert isinstance(error, FetchConnectionError)
    expected = aiohttp.ClientConnectionError if mode == "async" else requests.ConnectionError
    assert isinstance(error, expected)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nothing listens there


@pytest.mark.parametrize("mode", MODES)
def test_download_errors_are_the_libraries_status_errors(
        origin: Origin, mode: str, tmp_path: Path) -> None:
    url = origin.serve_bytes("/gone.bin", b"gone", status=404)
    with pytest.raises(HTTPStatusError) as info:
        call(mode, conn(), "download_file", with_secrets(url), tmp_path / "f.bin")
    expected = aiohttp.ClientResponseError if mode == "async" else requests.HTTPError
    assert isinstance(info.value, expected) and info.value.status == 404
    assert "secret" not in str(info.value)
    assert not (tmp_path / "f.bin").exists()


def test_raw_responses_raise_the_libraries_connection_errors() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/raw"
    with pytest.raises(requests.ConnectionError) as sync_info:
        conn().get_response(url)
    assert isinstance(sync_info.value, FetchConnectionError)

    async def run() -> None:
        c = conn()
        async with await c.get_async_response(url) as response:
            pytest.fail(f"answered {response.status}")

    with pytest.raises(aiohttp.ClientConnectionError) as async_info:
        asyncio.run(run())
    assert isinstance(async_info.value, FetchConnectionError)


@pytest.mark.parametrize("mode", MODES)
def test_bodies_cut_short_are_the_libraries_payload_errors(origin: Origin, mode: str) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        return await cut_after(request, b"x" * 100_000, 10_000)

    url = origin.route("/cut", cut)
    error = failure(mode, conn(retry=RetryPolicy.none()), with_secrets(url))
    assert isinstance(error, TruncatedBodyError)
    expected = (aiohttp.ClientPayloadError if mode == "async"
                else requests.exceptions.ChunkedEncodingError)
    assert isinstance(error, expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("url", ["httpx://127.0.0.1/a.png", "ftp://127.0.0.1/a.png",
                                 "http://127.0.0.1\\@evil.test/a.png"])
def test_invalid_urls_are_value_errors_and_requests_invalid_url(mode: str, url: str) -> None:
    error = failure(mode, conn(), url)
    assert isinstance(error, InvalidURLError) and isinstance(error, ValueError)
    assert isinstance(error, requests.exceptions.InvalidURL)


def test_the_sync_side_never_imports_aiohttp(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from vllm_fetch import global_http_connection, HTTPStatusError\n"
        "try:\n"
        "    global_http_connection.get_bytes('http://127.0.0.1:9/x', timeout=0.5)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "print('aiohttp' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={"VLLM_FETCH_DISABLE_CACHE": "1",
                                          "VLLM_FETCH_MAX_RETRIES": "0", "PATH": "/usr/bin"})
    assert out.stdout.split() == ["FetchConnectionError", "False"], out.stderr


# -- VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB -----------------------------------------------------------
def _streamed(origin: Origin, path: str, size: int) -> str:
    """A body of ``size`` bytes with no Content-Length (chunked)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for start in range(0, size, 64 * 1024):
            await response.write(b"m" * min(64 * 1024, size - start))
        return response
    return origin.route(path, handler)


@pytest.mark.parametrize("mode", MODES)
def test_media_limit_caps_get_bytes(origin: Origin, mode: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", "1")
    url = _streamed(origin, "/big.png", 2 * MiB)
    error = failure(mode, conn(), url)
    assert isinstance(error, MediaDownloadSizeExceededError)
    assert error.max_bytes == MiB and error.received_bytes is not None
    assert error.received_bytes == MiB + 1  # F16: its first byte past the cap
    announced = origin.serve_bytes("/announced.png", b"a" * (2 * MiB))
    error = failure(mode, conn(), announced)
    assert isinstance(error, MediaDownloadSizeExceededError)
    assert error.received_bytes == 2 * MiB  # refused on its Content-Length
    # get_text / get_json and downloads are not media fetches in vLLM: not capped
    assert len(call(mode, conn(), "get_text", url)) == 2 * MiB


@pytest.mark.parametrize("mode", MODES)
def test_the_smaller_of_max_bytes_and_the_media_limit_wins(
        origin: Origin, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", "1")
    url = _streamed(origin, "/big.png", 2 * MiB)
    error = failure(mode, conn(), url, max_bytes=100_000)
    assert isinstance(error, HTTPResponseSizeExceededError)  # what run_batch catches
    assert (error.max_bytes, error.received_bytes) == (100_000, 100_001)
    error = failure(mode, conn(), url, max_bytes=5 * MiB)
    assert isinstance(error, MediaDownloadSizeExceededError) and error.max_bytes == MiB
    monkeypatch.setenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", "0")
    assert len(call(mode, conn(), "get_bytes", url)) == 2 * MiB


@pytest.mark.parametrize("mode", MODES)
def test_the_media_limit_applies_to_cached_bodies_too(
        origin: Origin, mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = origin.serve_bytes("/cached.png", b"c" * (2 * MiB),
                             headers={"Cache-Control": "max-age=600"})
    c = conn(cache=tmp_path / "cache")
    assert len(call(mode, c, "get_bytes", url)) == 2 * MiB
    assert c.cache is not None
    c.cache.flush()  # bodies are written behind the call
    monkeypatch.setenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", "1")
    error = failure(mode, c, url)
    assert isinstance(error, MediaDownloadSizeExceededError)
    assert origin.count("/cached.png") == 1  # refused from the stored copy, as the network is
    assert str(error) == ("Remote media download exceeds VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB=1 "
                          f"(received at least {2 * MiB} bytes) from {url}")  # same words too


# -- request budgets ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_one_budget_is_shared_by_the_fetches_of_a_request(
        origin: Origin, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB", "1")
    first = _streamed(origin, "/one.png", 600_000)
    second = _streamed(origin, "/two.png", 600_000)
    budget = MediaRequestDownloadBudget()
    assert len(call(mode, conn(), "get_bytes", first, request_budget=budget)) == 600_000
    assert budget.used == 600_000
    error = failure(mode, conn(), second, request_budget=budget)
    assert isinstance(error, MediaRequestDownloadSizeExceededError)
    assert isinstance(error, ValueError)
    assert budget.used <= MiB
    fresh = MediaRequestDownloadBudget()  # another request has its own budget
    assert len(call(mode, conn(), "get_bytes", second, request_budget=fresh)) == 600_000


def test_concurrent_tasks_share_one_budget(origin: Origin,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB", "1")
    urls = [_streamed(origin, f"/p{i}.png", 300_000) for i in range(5)]
    budget = MediaRequestDownloadBudget()

    async def run() -> list[Any]:
        async with conn() as c:
            return await asyncio.gather(
                *(c.async_get_bytes(u, request_budget=budget) for u in urls),
                return_exceptions=True)

    results = asyncio.run(run())
    done = [r for r in results if isinstance(r, bytes)]
    refused = [r for r in results if isinstance(r, MediaRequestDownloadSizeExceededError)]
    assert len(done) + len(refused) == 5 and len(done) <= 3 and refused
    assert budget.used <= MiB


@pytest.mark.parametrize("mode", MODES)
def test_a_cache_hit_is_charged_like_a_download(
        origin: Origin, mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = origin.serve_bytes("/hit.png", b"h" * 400_000, headers={"Cache-Control": "max-age=600"})
    c = conn(cache=tmp_path / "cache")
    call(mode, c, "get_bytes", url)
    assert c.cache is not None
    c.cache.flush()
    budget = MediaRequestDownloadBudget()
    assert len(call(mode, c, "get_bytes", url, request_budget=budget)) == 400_000
    assert origin.count("/hit.png") == 1  # served from the cache
    assert budget.used == 400_000


# -- the size errors' messages: vLLM's words, then the redacted URL ---------------------------
def shown(url: str) -> str:
    """How messages name ``with_secrets(url)``: no userinfo, the query as ``?…``."""
    return url + "?…"


def vllm_http_message(max_bytes: int, received: int) -> str:
    """str() of vLLM 0.33's HTTPResponseSizeExceededError (a VLLMValidationError)."""
    return ("Maximum file size exceeded: HTTP response exceeded maximum size of "
            f"{max_bytes} bytes (received at least {received} bytes) "
            f"(parameter=audio_filesize_mb, value={received / MiB})")


@pytest.mark.parametrize("mode", MODES)
def test_max_bytes_messages_are_vllms(origin: Origin, mode: str) -> None:
    announced = origin.serve_bytes("/announced.bin", b"a" * 5000)
    error = failure(mode, conn(), with_secrets(announced), max_bytes=1000)
    assert isinstance(error, HTTPResponseSizeExceededError)
    assert str(error) == vllm_http_message(1000, 5000) + f" from {shown(announced)}"
    streamed = _streamed(origin, "/overrun.bin", 200_000)
    error = failure(mode, conn(), with_secrets(streamed), max_bytes=10_000)
    assert isinstance(error, HTTPResponseSizeExceededError)
    received = error.received_bytes
    assert received == 10_001 if mode == "sync" else 10_000 < received < 200_000
    assert str(error) == vllm_http_message(10_000, received) + f" from {shown(streamed)}"


@pytest.mark.parametrize("mode", MODES)
def test_media_limit_messages_are_vllms(origin: Origin, mode: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", "1")
    announced = origin.serve_bytes("/announced.png", b"a" * (2 * MiB))
    streamed = _streamed(origin, "/streamed.png", 2 * MiB)
    for url in (announced, streamed):
        error = failure(mode, conn(), with_secrets(url))
        assert isinstance(error, MediaDownloadSizeExceededError)
        assert error.received_bytes is not None
        assert str(error) == ("Remote media download exceeds VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB=1 "
                              f"(received at least {error.received_bytes} bytes) from {shown(url)}")
    assert error.received_bytes < 2 * MiB  # the streamed one: stopped past the limit


@pytest.mark.parametrize("mode", MODES)
def test_request_budget_messages_are_vllms(origin: Origin, mode: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB", "1")
    first = _streamed(origin, "/one.png", 600_000)
    second = _streamed(origin, "/two.png", 600_000)
    budget = MediaRequestDownloadBudget()
    call(mode, conn(), "get_bytes", first, request_budget=budget)
    error = failure(mode, conn(), with_secrets(second), request_budget=budget)
    assert isinstance(error, MediaRequestDownloadSizeExceededError)
    found = re.fullmatch(r"Request media downloads exceed VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB"
                         r"=1 \((\d+) bytes received, including retried attempts\)\. from "
                         + re.escape(shown(second)), str(error))
    assert found is not None, str(error)
    assert budget.used <= MiB < int(found[1]) <= budget.used + 600_000


# -- vLLM's private hooks: overrides written for vLLM are honoured -----------------------------
class VllmStyleConnection(HTTPConnection):
    """A subclass as one would write it for vLLM: its own header, its own URL rule."""

    def _validate_http_url(self, url: str) -> None:
        if "/forbidden" in url:
            raise ValueError("forbidden by the subclass")
        super()._validate_http_url(url)

    def _headers(self, **extras: str) -> MutableMapping[str, str]:
        return {**super()._headers(**extras), "X-Tenant": "t1"}


def _sent(origin: Origin, path: str) -> dict[str, str]:
    (seen,) = origin.seen(path)
    return {k.lower(): v for k, v in seen.headers.items()}


@pytest.mark.parametrize("mode", MODES)
def test_a_subclass_overriding_the_hooks_is_honoured(origin: Origin, mode: str) -> None:
    url = origin.serve_bytes(f"/{mode}/ok.png", b"ok")
    c = VllmStyleConnection(cache=False, retry=FAST)
    assert call(mode, c, "get_bytes", url, extra_headers={"X-Extra": "1"}) == b"ok"
    sent = _sent(origin, f"/{mode}/ok.png")
    assert sent["x-tenant"] == "t1" and sent["x-extra"] == "1"  # extras reach _headers
    assert sent["user-agent"] == c.options.user_agent and sent["accept-encoding"] == "identity"
    forbidden = origin.serve_bytes(f"/{mode}/forbidden.png", b"no")
    with pytest.raises(ValueError, match="forbidden by the subclass"):
        call(mode, c, "get_bytes", forbidden)
    assert origin.count(f"/{mode}/forbidden.png") == 0  # refused before any request
    with pytest.raises(InvalidURLError):  # super() is vllm_fetch's check
        call(mode, c, "get_bytes", f"ftp://127.0.0.1:{origin.port}/{mode}/ok.png")


def test_raw_responses_ask_the_hooks_too(origin: Origin) -> None:
    url = origin.serve_bytes("/raw.png", b"raw")
    c = VllmStyleConnection(cache=False, retry=FAST)
    with c.get_response(url, extra_headers={"X-Extra": "2"}) as response:
        assert response.content == b"raw"
    assert _sent(origin, "/raw.png")["x-tenant"] == "t1"

    async def run() -> bytes:
        async with await c.get_async_response(url) as r:
            return await r.read()

    assert asyncio.run(run()) == b"raw"
    assert [s.headers.get("X-Tenant") for s in origin.seen("/raw.png")] == ["t1", "t1"]
    with pytest.raises(ValueError, match="forbidden by the subclass"):
        c.get_response(origin.url("/forbidden"))


@pytest.mark.parametrize("mode", MODES)
def test_patched_hooks_are_honoured(origin: Origin, mode: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url = origin.serve_bytes(f"/{mode}/p.png", b"p")
    c = conn()
    # an instance patch of _headers (vLLM style: keyword extras in, a mapping out)
    monkeypatch.setattr(c, "_headers", lambda **extras: {"User-Agent": "patched/1", **extras})
    assert call(mode, c, "get_bytes", url) == b"p"
    assert _sent(origin, f"/{mode}/p.png")["user-agent"] == "patched/1"
    # a class patch of _validate_http_url reaches every connection, the global one too
    asked: list[str] = []
    monkeypatch.setattr(HTTPConnection, "_validate_http_url",
                        lambda self, u: asked.append(u))
    assert call(mode, conn(), "get_bytes", url) == b"p"
    assert asked == [url]


def test_unpatched_connections_send_the_default_headers(origin: Origin) -> None:
    url = origin.serve_bytes("/plain.png", b"d")
    c = conn()
    assert c.get_bytes(url) == b"d"
    sent = _sent(origin, "/plain.png")
    assert {k: sent[k.lower()] for k in c._headers()} == c._headers()


# -- URLs with literal spaces ------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_space_in_the_path_is_sent_as_percent_20(origin: Origin, mode: str) -> None:
    origin.serve_bytes("/my image.png", b"img")
    url = origin.url("/my image.png?size=a b")
    assert call(mode, conn(), "get_bytes", url) == b"img"
    assert [s.raw_path for s in origin.seen("/my image.png")] == ["/my%20image.png?size=a%20b"]


@pytest.mark.parametrize("mode", MODES)
def test_encoded_urls_reach_the_origin_verbatim(origin: Origin, mode: str) -> None:
    origin.serve_bytes("/sig~/a b", b"signed")
    raw = "/sig%7e/a%20b?X-Amz-Signature=ab%2Fcd%3d&n=%41"
    assert call(mode, conn(), "get_bytes", origin.url(raw)) == b"signed"
    assert [s.raw_path for s in origin.seen("/sig~/a b")] == [raw]


@pytest.mark.parametrize("mode", MODES)
def test_a_redirect_to_a_path_with_a_space_is_followed(origin: Origin, mode: str) -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "/new place.png"})

    url = origin.route("/old.png", moved)
    origin.serve_bytes("/new place.png", b"moved")
    assert call(mode, conn(), "get_bytes", url) == b"moved"
    assert [s.raw_path for s in origin.seen("/new place.png")] == ["/new%20place.png"]
