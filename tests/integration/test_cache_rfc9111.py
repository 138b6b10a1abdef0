"""RFC 9111 through ``fetch_bytes`` against a real loopback origin, sync and async (issue 15)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.helpers import call
from tests.origin import Origin, sha256
from vllm_fetch import (
    FetchCache,
    FetchError,
    FetchResult,
    HTTPConnection,
    HTTPStatusError,
    OfflineError,
    RetryPolicy,
    SizeLimitExceededError,
)

MODES = ["sync", "async"]
BODY = os.urandom(100_000)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache")
    yield store
    store.close()


def connect(cache: FetchCache) -> HTTPConnection:
    return HTTPConnection(retry=RetryPolicy.none(), cache=cache)


def fetch(mode: str, conn: HTTPConnection, url: str, **kwargs: Any) -> FetchResult:
    result: FetchResult = call(mode, conn, "fetch_bytes", url, **kwargs)
    return result


def serve(origin: Origin, path: str, body: bytes, headers: list[tuple[str, str]],
          status: int = 200) -> str:
    """Serve ``body`` with these header lines (a name may repeat)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        origin.count_sent(len(body))
        return web.Response(body=body, status=status, headers=CIMultiDict(headers))
    return origin.route(path, handler)


# --- 1. the public result -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_fetch_bytes_returns_status_headers_url_source_age_and_sha256(
        mode: str, origin: Origin, cache: FetchCache) -> None:
    url = serve(origin, "/img", BODY, [("Content-Type", "image/png"),
                                       ("Cache-Control", "max-age=600"),
                                       ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    conn = connect(cache)
    first = fetch(mode, conn, url)
    assert (first.status, first.url, first.from_cache, first.age) == (200, url, False, 0)
    assert first.content == BODY and first.sha256 == sha256(BODY)
    assert isinstance(first.headers, CIMultiDictProxy)
    assert first.headers["content-type"] == "image/png"
    assert first.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    second = fetch(mode, conn, url)
    assert (second.status, second.url, second.from_cache) == (200, url, True)
    assert second.content == BODY and second.sha256 == sha256(BODY)
    assert isinstance(second.headers, CIMultiDictProxy)
    assert second.headers["Content-Type"] == "image/png"
    assert second.headers.getall("set-cookie") == ["a=1", "b=2"]
    assert origin.count("/img") == 1
    with pytest.raises(AttributeError):
        second.status = 500
    # the thin wrappers see the same answer
    assert call(mode, conn, "get_bytes", url) == BODY
    assert origin.count("/img") == 1


# --- 2. every end-to-end header stored; updated from a 304 --------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_every_end_to_end_header_is_stored_and_a_304_updates_them(
        mode: str, origin: Origin, cache: FetchCache) -> None:
    state = {"x": "1"}

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict([("ETag", '"e1"'), ("Cache-Control", "max-age=0"),
                               ("Content-Security-Policy", "default-src 'none'"),
                               ("Content-Location", "/doc.v1"), ("X-Frame-Options", "DENY"),
                               ("X-Custom", state["x"]), ("X-Multi", "a"), ("X-Multi", "b")])
        if request.headers.get("If-None-Match") == '"e1"':
            return web.Response(status=304, headers=headers)
        return web.Response(body=b"doc", headers=headers)

    url = origin.route("/doc", handler)
    conn = connect(cache)
    fetch(mode, conn, url)
    state["x"] = "2"  # only the 304 tells
    again = fetch(mode, conn, url)
    assert again.from_cache and again.content == b"doc"
    assert again.headers["Content-Security-Policy"] == "default-src 'none'"
    assert again.headers["Content-Location"] == "/doc.v1"
    assert again.headers["X-Frame-Options"] == "DENY"
    assert again.headers.getall("X-Multi") == ["a", "b"]
    assert again.headers["X-Custom"] == "2"  # §4.3.4: from the 304
    assert "Transfer-Encoding" not in again.headers and "Connection" not in again.headers
    assert [s.headers.get("If-None-Match") for s in origin.seen("/doc")] == [None, '"e1"']
    cache.flush()
    stored = connect(cache)  # a new connection reads the refreshed entry from the index
    assert fetch(mode, stored, url).headers["X-Custom"] == "2"


# --- 3. Age -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_cached_answer_carries_its_current_age(mode: str, origin: Origin,
                                                 cache: FetchCache) -> None:
    url = serve(origin, "/aged", b"x", [("Cache-Control", "max-age=600"), ("Age", "30")])
    conn = connect(cache)
    first = fetch(mode, conn, url)
    assert first.headers["Age"] == "30" and not first.from_cache  # the origin's own
    second = fetch(mode, conn, url)
    assert second.from_cache
    assert second.headers.getall("Age") == [str(second.age)]  # one Age: the current one
    assert 30 <= second.age < 60
    fresh_url = serve(origin, "/new", b"y", [("Cache-Control", "max-age=600")])
    fetch(mode, conn, fresh_url)
    assert fetch(mode, conn, fresh_url).headers["Age"] in ("0", "1", "2")


# --- 4. invalid Expires -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("expires", [
    [formatdate(time.time() + 3600, usegmt=True).replace("GMT", "UTC")],
    [formatdate(time.time() + 3600, usegmt=True).replace(",", "")],
    [formatdate(time.time() + 3600, usegmt=True)] * 2,  # several Expires lines
])
def test_an_invalid_expires_is_stale_at_once(mode: str, expires: list[str], origin: Origin,
                                             cache: FetchCache) -> None:
    url = serve(origin, "/exp", b"x", [("Expires", value) for value in expires])
    conn = connect(cache)
    fetch(mode, conn, url)
    assert not fetch(mode, conn, url).from_cache
    assert origin.count("/exp") == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_valid_expires_is_fresh(mode: str, origin: Origin, cache: FetchCache) -> None:
    url = serve(origin, "/exp", b"x", [("Expires", formatdate(time.time() + 3600, usegmt=True))])
    conn = connect(cache)
    fetch(mode, conn, url)
    assert fetch(mode, conn, url).from_cache
    assert origin.count("/exp") == 1


# --- 5. repeated lines combined on both sides ---------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_vary_star_on_a_second_line_is_never_reused(mode: str, origin: Origin,
                                                    cache: FetchCache) -> None:
    url = serve(origin, "/vary", b"x", [("Cache-Control", "max-age=600"), ("Vary", ""),
                                        ("Vary", "*")])
    conn = connect(cache)
    fetch(mode, conn, url)
    assert not fetch(mode, conn, url).from_cache
    assert origin.count("/vary") == 2


@pytest.mark.parametrize("mode", MODES)
def test_cache_control_on_two_lines_counts_both(mode: str, origin: Origin,
                                                cache: FetchCache) -> None:
    url = serve(origin, "/cc", b"x", [("Cache-Control", "max-age=600"),
                                      ("Cache-Control", "no-store")])
    conn = connect(cache)
    fetch(mode, conn, url)
    fetch(mode, conn, url)
    assert origin.count("/cc") == 2
    assert cache.info().entries == 0


# --- 6. Range from the stored full response -----------------------------------------------------


def serve_ranges(origin: Origin, path: str) -> str:
    """A full 100,000-byte body with an ETag; a Range request gets the origin's own 206."""
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"ETag": '"r1"', "Cache-Control": "max-age=600", "Accept-Ranges": "bytes"}
        if "Range" in request.headers:
            return web.Response(status=206, body=BODY[:2] + BODY[4:6], headers={
                **headers, "Content-Type": "multipart/byteranges; boundary=x"})
        return web.Response(body=BODY, headers=headers)
    return origin.route(path, handler)


@pytest.mark.parametrize("mode", MODES)
def test_range_is_answered_from_the_stored_body(mode: str, origin: Origin,
                                                cache: FetchCache) -> None:
    url = serve_ranges(origin, "/big")
    conn = connect(cache)
    fetch(mode, conn, url)
    part = fetch(mode, conn, url, extra_headers={"Range": "bytes=0-7"})
    assert (part.status, part.content, part.from_cache) == (206, BODY[:8], True)
    assert part.headers["Content-Range"] == "bytes 0-7/100000"
    assert part.headers["Content-Length"] == "8"
    assert part.sha256 == sha256(BODY[:8])
    tail = fetch(mode, conn, url, extra_headers={"Range": "bytes=-5"})
    assert (tail.status, tail.content) == (206, BODY[-5:])
    matching = fetch(mode, conn, url, extra_headers={"Range": "bytes=1-2", "If-Range": '"r1"'})
    assert (matching.status, matching.content) == (206, BODY[1:3])
    # If-Range names another version: the whole stored response (RFC 9110 §13.1.5)
    whole = fetch(mode, conn, url, extra_headers={"Range": "bytes=1-2", "If-Range": '"r0"'})
    assert (whole.status, whole.content) == (200, BODY)
    assert call(mode, conn, "get_bytes", url, extra_headers={"Range": "bytes=0-7"}) == BODY[:8]
    assert origin.count("/big") == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_range_the_cache_cannot_answer_goes_to_the_origin_uncached(
        mode: str, origin: Origin, cache: FetchCache) -> None:
    url = serve_ranges(origin, "/big")
    conn = connect(cache)
    fetch(mode, conn, url)
    multi = fetch(mode, conn, url, extra_headers={"Range": "bytes=0-1,4-5"})
    assert (multi.status, multi.from_cache) == (206, False)
    assert origin.seen("/big")[-1].headers["Range"] == "bytes=0-1,4-5"
    assert fetch(mode, conn, url).content == BODY  # the stored full response is untouched
    assert origin.count("/big") == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_range_with_nothing_stored_stores_nothing(mode: str, origin: Origin,
                                                    cache: FetchCache) -> None:
    url = serve_ranges(origin, "/big")
    conn = connect(cache)
    assert fetch(mode, conn, url, extra_headers={"Range": "bytes=0-7"}).status == 206
    cache.flush()
    assert cache.info().entries == 0


# --- 7. redirects cached per hop ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_an_uncacheable_redirect_is_followed_anew(mode: str, origin: Origin,
                                                  cache: FetchCache) -> None:
    target = {"path": "/v1"}

    async def avatar(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": target["path"],
                                                 "Cache-Control": "no-store"})

    origin.route("/avatar", avatar)
    serve(origin, "/v1", b"one", [("Cache-Control", "max-age=3600")])
    serve(origin, "/v2", b"two", [("Cache-Control", "max-age=3600")])
    conn = connect(cache)
    first = fetch(mode, conn, origin.url("/avatar"))
    assert (first.content, first.url) == (b"one", origin.url("/v1"))
    target["path"] = "/v2"
    again = fetch(mode, conn, origin.url("/avatar"))
    assert (again.content, again.url, again.from_cache) == (b"two", origin.url("/v2"), False)
    assert call(mode, conn, "get_bytes", origin.url("/v1")) == b"one"  # /v1 kept its own entry
    assert (origin.count("/avatar"), origin.count("/v1"), origin.count("/v2")) == (2, 1, 1)


@pytest.mark.parametrize("mode", MODES)
def test_a_fresh_redirect_is_answered_from_the_cache(mode: str, origin: Origin,
                                                     cache: FetchCache) -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        return web.Response(status=301, headers={"Location": "/new", "X-Hop": "1"})

    origin.route("/old", moved)  # 301: heuristically cacheable, but no Last-Modified: fresh 0
    async def moved_fresh(request: web.Request) -> web.StreamResponse:
        return web.Response(status=308, headers={"Location": "/new",
                                                 "Cache-Control": "max-age=600"})

    origin.route("/old-fresh", moved_fresh)
    serve(origin, "/new", b"new", [("Cache-Control", "max-age=600")])
    conn = connect(cache)
    assert fetch(mode, conn, origin.url("/old-fresh")).content == b"new"
    cached = fetch(mode, conn, origin.url("/old-fresh"))
    assert (cached.content, cached.url, cached.from_cache) == (b"new", origin.url("/new"), True)
    assert fetch(mode, conn, origin.url("/old")).content == b"new"
    assert fetch(mode, conn, origin.url("/old")).content == b"new"
    assert (origin.count("/old-fresh"), origin.count("/old"), origin.count("/new")) == (1, 2, 1)


# --- 8. cacheable statuses beyond 200 -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_cached_404_raises_with_zero_requests_while_fresh(mode: str, origin: Origin,
                                                            cache: FetchCache) -> None:
    url = serve(origin, "/gone", b"nope", [("Cache-Control", "max-age=600")], status=404)
    conn = connect(cache)
    messages = []
    for _ in range(2):
        with pytest.raises(HTTPStatusError) as info:
            call(mode, conn, "get_bytes", url)
        assert info.value.status == 404
        messages.append(str(info.value).split(" (after")[0])
    # the stored answer says what the origin's said (its reason phrase included)
    assert messages[0] == messages[1] and "HTTP 404 Not Found for " in messages[1], messages
    with pytest.raises(HTTPStatusError):
        fetch(mode, conn, url)
    assert origin.count("/gone") == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("status", [203, 204])
def test_other_2xx_statuses_are_stored(mode: str, status: int, origin: Origin,
                                       cache: FetchCache) -> None:
    body = b"" if status == 204 else b"meta"
    url = serve(origin, "/s", body, [("Cache-Control", "max-age=600")], status=status)
    conn = connect(cache)
    fetch(mode, conn, url)
    again = fetch(mode, conn, url)
    assert (again.status, again.content, again.from_cache) == (status, body, True)
    assert origin.count("/s") == 1


# --- 9. request directives, stale-while-revalidate, stale-if-error -----------------------------


@pytest.mark.parametrize("mode", MODES)
def test_only_if_cached_miss_is_an_offline_error_without_a_request(
        mode: str, origin: Origin, cache: FetchCache) -> None:
    url = serve(origin, "/o", b"x", [("Cache-Control", "max-age=600")])
    conn = connect(cache)
    only = {"Cache-Control": "only-if-cached"}
    with pytest.raises(OfflineError):
        fetch(mode, conn, url, extra_headers=only)
    assert origin.count("/o") == 0
    fetch(mode, conn, url)
    assert fetch(mode, conn, url, extra_headers=only).from_cache
    assert origin.count("/o") == 1


@pytest.mark.parametrize("mode", MODES)
def test_max_stale_min_fresh_and_no_cache(mode: str, origin: Origin, cache: FetchCache) -> None:
    url = serve(origin, "/d", b"x", [("Cache-Control", "max-age=600"), ("Age", "700")])
    conn = connect(cache)
    fetch(mode, conn, url)  # stored already stale by 100 s
    assert fetch(mode, conn, url, extra_headers={"Cache-Control": "max-stale=3600"}).from_cache
    assert origin.count("/d") == 1
    assert not fetch(mode, conn, url, extra_headers={"Cache-Control": "max-stale=10"}).from_cache
    fresh = serve(origin, "/f", b"y", [("Cache-Control", "max-age=600")])
    fetch(mode, conn, fresh)
    assert fetch(mode, conn, fresh, extra_headers={"Cache-Control": "min-fresh=60"}).from_cache
    assert not fetch(mode, conn, fresh,
                     extra_headers={"Cache-Control": "min-fresh=3600"}).from_cache
    assert not fetch(mode, conn, fresh, extra_headers={"Cache-Control": "no-cache"}).from_cache
    assert (origin.count("/d"), origin.count("/f")) == (2, 3)


def test_stale_while_revalidate_serves_stale_and_refreshes_in_the_background_sync(
        origin: Origin, cache: FetchCache) -> None:
    version = {"n": 1}

    async def handler(request: web.Request) -> web.StreamResponse:  # v2 fresh: no refresh
        return web.Response(body=f"v{version['n']}".encode(), headers={  # outlives the test
            "Cache-Control": "max-age=1, stale-while-revalidate=600", "Age": "5"}
            if version["n"] == 1 else {"Cache-Control": "max-age=600"})

    url = origin.route("/swr", handler)
    conn = connect(cache)
    assert conn.fetch_bytes(url).content == b"v1"  # stored stale (age 5 > 1), inside the window
    version["n"] = 2
    stale = conn.fetch_bytes(url)
    assert (stale.content, stale.from_cache) == (b"v1", True)
    deadline = time.monotonic() + 10
    while origin.count("/swr") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert origin.count("/swr") == 2  # revalidated behind the caller's back
    cache.flush()
    while conn.get_bytes(url) != b"v2" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert conn.get_bytes(url) == b"v2"


def test_stale_while_revalidate_serves_stale_and_refreshes_in_the_background_async(
        origin: Origin, cache: FetchCache) -> None:
    version = {"n": 1}

    async def handler(request: web.Request) -> web.StreamResponse:  # v2 fresh: no refresh
        return web.Response(body=f"v{version['n']}".encode(), headers={  # outlives the test
            "Cache-Control": "max-age=1, stale-while-revalidate=600", "Age": "5"}
            if version["n"] == 1 else {"Cache-Control": "max-age=600"})

    url = origin.route("/swr", handler)
    conn = connect(cache)

    async def run() -> None:
        assert (await conn.async_fetch_bytes(url)).content == b"v1"
        version["n"] = 2
        stale = await conn.async_fetch_bytes(url)
        assert (stale.content, stale.from_cache) == (b"v1", True)
        for _ in range(1000):
            if origin.count("/swr") == 2:
                break
            await asyncio.sleep(0.01)
        assert origin.count("/swr") == 2
        for _ in range(1000):
            if await conn.async_get_bytes(url) == b"v2":
                break
            await asyncio.sleep(0.01)
        assert await conn.async_get_bytes(url) == b"v2"
        await conn.aclose()

    asyncio.run(run())


class SwrBehindRedirect:
    """``/avatar``: a 301 fresh for an hour to ``/v1``; ``/v1``: version 1 stale on arrival
    (Age 5 > max-age 1) inside a 600 s stale-while-revalidate window, version 2 fresh for
    10 minutes, ETag ``"v<n>"``. A conditional
    request (the background refresh) is held until :attr:`release` is set, so a call that
    waited for it could not return the stale body."""

    def __init__(self, origin: Origin) -> None:
        self.origin, self.version, self.release = origin, 1, threading.Event()

        async def avatar(request: web.Request) -> web.StreamResponse:
            return web.Response(status=301, headers={"Location": "/v1",
                                                     "Cache-Control": "max-age=3600"})

        async def v1(request: web.Request) -> web.StreamResponse:
            if "If-None-Match" in request.headers:
                for _ in range(1000):
                    if self.release.is_set():
                        break
                    await asyncio.sleep(0.01)
            etag = f'"v{self.version}"'
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers={"ETag": etag})
            fresh = {"Cache-Control": "max-age=600"}  # the refreshed copy: fresh, no refresh
            stale = {"Cache-Control": "max-age=1, stale-while-revalidate=600", "Age": "5"}
            return web.Response(body=f"v{self.version}".encode(),
                                headers={**(stale if self.version == 1 else fresh), "ETag": etag})

        self.url = origin.route("/avatar", avatar)
        origin.route("/v1", v1)

    def refresh_seen(self) -> bool:
        return self.origin.count("/v1") >= 2

    def check_refresh(self) -> None:
        assert self.origin.count("/v1") == 2, self.origin.requests
        assert self.origin.seen("/v1")[1].headers.get("If-None-Match") == '"v1"'
        assert self.origin.count("/avatar") == 1  # the stored redirect answered every call


def test_stale_while_revalidate_through_a_stored_redirect_refreshes_the_hop_sync(
        origin: Origin, cache: FetchCache) -> None:
    site = SwrBehindRedirect(origin)
    conn = connect(cache)
    assert conn.fetch_bytes(site.url).content == b"v1"
    cache.flush()
    site.version = 2
    stale = conn.fetch_bytes(site.url)  # at once: the refresh is held at the origin
    assert (stale.content, stale.from_cache, stale.url) == (b"v1", True, origin.url("/v1"))
    deadline = time.monotonic() + 10
    while not site.refresh_seen() and time.monotonic() < deadline:
        time.sleep(0.01)
    site.check_refresh()  # /v1 revalidated behind the caller's back, conditionally
    site.release.set()
    while conn.get_bytes(site.url) != b"v2" and time.monotonic() < deadline:
        time.sleep(0.01)
        cache.flush()
    assert conn.get_bytes(site.url) == b"v2"
    site.check_refresh()


def test_stale_while_revalidate_through_a_stored_redirect_refreshes_the_hop_async(
        origin: Origin, cache: FetchCache) -> None:
    site = SwrBehindRedirect(origin)
    conn = connect(cache)

    async def run() -> None:
        assert (await conn.async_fetch_bytes(site.url)).content == b"v1"
        cache.flush()
        site.version = 2
        stale = await conn.async_fetch_bytes(site.url)
        assert (stale.content, stale.from_cache, stale.url) == (b"v1", True, origin.url("/v1"))
        for _ in range(1000):
            if site.refresh_seen():
                break
            await asyncio.sleep(0.01)
        site.check_refresh()
        site.release.set()
        for _ in range(1000):
            if await conn.async_get_bytes(site.url) == b"v2":
                break
            await asyncio.sleep(0.01)
            cache.flush()
        assert await conn.async_get_bytes(site.url) == b"v2"
        site.check_refresh()
        await conn.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("mode", MODES)
def test_stale_if_error_serves_the_stored_copy_within_its_bound(
        mode: str, origin: Origin, cache: FetchCache) -> None:
    failing = {"on": False}

    async def handler(request: web.Request) -> web.StreamResponse:
        if failing["on"]:
            return web.Response(status=500)
        return web.Response(body=b"good", headers={
            "Cache-Control": "max-age=1, stale-if-error=600", "Age": "5"})

    url = origin.route("/sie", handler)
    conn = connect(cache)
    fetch(mode, conn, url)
    failing["on"] = True
    stale = fetch(mode, conn, url)
    assert (stale.content, stale.from_cache) == (b"good", True)
    with pytest.raises(HTTPStatusError):  # RFC 5861 §4: the request's own bound
        fetch(mode, conn, url, extra_headers={"Cache-Control": "stale-if-error=1"})
    assert origin.count("/sie") == 3


@pytest.mark.parametrize("mode", MODES)
def test_a_download_honours_the_request_stale_if_error_when_the_origin_is_down(
        mode: str, cache: FetchCache, tmp_path: Path) -> None:
    """RFC 5861 §4: the request's ``stale-if-error`` bounds the stale copy a download falls
    back to when the origin is unreachable, as it does for a body and for a 5xx."""
    server = Origin().start()
    url = serve(server, "/gone.bin", BODY, [("Cache-Control", "max-age=1, stale-if-error=600"),
                                            ("Age", "5")])
    conn = connect(cache)
    call(mode, conn, "download_file", url, tmp_path / "first.bin")
    server.stop()  # unreachable from now on: connection refused
    fallback = call(mode, conn, "download_file", url, tmp_path / "stale.bin")
    assert sha256(Path(fallback).read_bytes()) == sha256(BODY)  # within the response's bound
    with pytest.raises(FetchError):  # stale by ~4 s, the request allows 1
        call(mode, conn, "download_file", url, tmp_path / "bounded.bin",
             extra_headers={"Cache-Control": "stale-if-error=1"})
    assert not (tmp_path / "bounded.bin").exists()
    assert server.count("/gone.bin") == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_stored_redirect_or_error_is_never_a_downloaded_file(
        mode: str, origin: Origin, cache: FetchCache, tmp_path: Path) -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        return web.Response(status=308, headers={"Location": "/file",
                                                 "Cache-Control": "max-age=600"})

    origin.route("/moved", moved)
    serve(origin, "/file", BODY, [("Cache-Control", "max-age=600")])
    missing = serve(origin, "/missing", b"", [("Cache-Control", "max-age=600")], status=404)
    conn = connect(cache)
    fetch(mode, conn, origin.url("/moved"))  # stores the 308 under /moved, the body under /file
    with pytest.raises(HTTPStatusError):
        fetch(mode, conn, missing)
    cache.flush()
    target = tmp_path / "out.bin"
    result = call(mode, conn, "fetch_file", origin.url("/moved"), target)
    assert sha256(target.read_bytes()) == sha256(BODY)
    # the fresh stored 308 led to /file's stored body: zero requests
    assert (result.from_cache, result.url) == (True, origin.url("/file"))
    assert (origin.count("/moved"), origin.count("/file")) == (1, 1)
    with pytest.raises(HTTPStatusError):
        call(mode, conn, "download_file", missing, tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()


@pytest.mark.parametrize("mode", MODES)
def test_max_bytes_applies_to_the_range_served(mode: str, origin: Origin,
                                               cache: FetchCache) -> None:
    url = serve_ranges(origin, "/big")
    conn = connect(cache)
    fetch(mode, conn, url)
    part = fetch(mode, conn, url, extra_headers={"Range": "bytes=0-7"}, max_bytes=8)
    assert part.content == BODY[:8]
    with pytest.raises(SizeLimitExceededError):
        fetch(mode, conn, url, extra_headers={"Range": "bytes=0-8"}, max_bytes=8)
    assert origin.count("/big") == 1
