"""The disk cache against a real loopback origin, sync and async (issue 4's "Done when")."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from tests.cache_origin import Resource, serve_resource
from tests.helpers import call, leftovers, stored_bytes
from tests.origin import Origin, sha256
from vllm_fetch import (
    CacheUnreadableError,
    DiskError,
    FetchCache,
    FetchConnectionError,
    HTTPConnection,
    OfflineError,
    RetryPolicy,
    SizeLimitExceededError,
)
from vllm_fetch.cache.segments import _Active

MODES = ["sync", "async"]
BODY = os.urandom(64 * 1024 + 3)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache")
    yield store
    store.close()


def connect(cache: FetchCache | bool, **kwargs: object) -> HTTPConnection:
    return HTTPConnection(retry=RetryPolicy.none(), cache=cache, **kwargs)  # type: ignore[arg-type]


def fetch(mode: str, conn: HTTPConnection, url: str, **kwargs: object) -> bytes:
    data: bytes = call(mode, conn, "get_bytes", url, **kwargs)
    return data


# --- transfers saved ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_second_fetch_is_not_a_second_transfer(mode: str, origin: Origin,
                                               cache: FetchCache) -> None:
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    assert sha256(fetch(mode, conn, url)) == sha256(BODY)
    assert sha256(fetch(mode, conn, url)) == sha256(BODY)
    assert origin.count("/img") == 1
    assert origin.bytes_sent == len(BODY)


@pytest.mark.parametrize("mode", MODES)
def test_fresh_max_age_entry_makes_zero_requests(mode: str, origin: Origin,
                                                 cache: FetchCache, tmp_path: Path) -> None:
    resource = Resource(json.dumps({"k": [1, 2]}).encode(), cache_control="max-age=600",
                        extra={"Content-Type": "application/json; charset=utf-8"})
    url = serve_resource(origin, "/doc", resource)
    connect(cache).get_bytes(url)  # warm the cache (sync) ...
    origin.requests.clear()
    conn = connect(cache)  # ... and read it back from the other side, a new connection
    assert call(mode, conn, "get_json", url) == {"k": [1, 2]}
    assert call(mode, conn, "get_text", url) == '{"k": [1, 2]}'
    target = tmp_path / "doc.json"
    assert call(mode, conn, "download_file", url, target) == target
    assert target.read_bytes() == resource.body
    assert origin.requests == []


@pytest.mark.parametrize("mode", MODES)
def test_stale_entry_revalidates_with_if_none_match_and_304(mode: str, origin: Origin,
                                                            cache: FetchCache) -> None:
    resource = Resource(BODY, cache_control="max-age=0")
    url = serve_resource(origin, "/stale", resource)
    conn = connect(cache)
    assert fetch(mode, conn, url) == BODY
    assert fetch(mode, conn, url) == BODY
    seen = origin.seen("/stale")
    assert len(seen) == 2
    assert "If-None-Match" not in seen[0].headers
    assert seen[1].headers["If-None-Match"] == resource.etag
    assert resource.not_modified == 1
    assert origin.bytes_sent == len(BODY)  # the body crossed the wire once


@pytest.mark.parametrize("mode", MODES)
def test_changed_etag_yields_the_new_bytes(mode: str, origin: Origin, cache: FetchCache) -> None:
    resource = Resource(b"version one", cache_control="no-cache")
    url = serve_resource(origin, "/v", resource)
    conn = connect(cache)
    assert fetch(mode, conn, url) == b"version one"
    resource.change(b"version two!")
    assert fetch(mode, conn, url) == b"version two!"
    assert fetch(mode, conn, url) == b"version two!"
    assert [s.headers.get("If-None-Match") for s in origin.seen("/v")] == [None, '"v1"', '"v2"']
    assert [item.etag for item in cache.entries()] == ['"v2"']


@pytest.mark.parametrize("mode", MODES)
def test_no_store_is_never_kept(mode: str, origin: Origin, cache: FetchCache) -> None:
    url = serve_resource(origin, "/secret", Resource(BODY, cache_control="no-store"))
    conn = connect(cache)
    assert fetch(mode, conn, url) == BODY
    assert fetch(mode, conn, url) == BODY
    assert origin.count("/secret") == 2
    info = cache.info()
    assert (info.entries, info.blobs, info.bytes) == (0, 0, 0)


@pytest.mark.parametrize("mode", MODES)
def test_download_file_hit_copies_the_blob(mode: str, origin: Origin, cache: FetchCache,
                                           tmp_path: Path) -> None:
    url = serve_resource(origin, "/w.bin", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    out = tmp_path / "out"
    out.mkdir()
    call(mode, conn, "download_file", url, out / "a.bin")
    call(mode, conn, "download_file", url, out / "b.bin", expected_sha256=sha256(BODY))
    assert fetch(mode, conn, url) == BODY  # the downloaded file also serves get_bytes
    assert origin.count("/w.bin") == 1
    assert sha256((out / "a.bin").read_bytes()) == sha256((out / "b.bin").read_bytes())
    assert sha256((out / "b.bin").read_bytes()) == sha256(BODY)
    assert leftovers(out) == ["a.bin", "b.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_download_file_revalidates_without_a_second_body(mode: str, origin: Origin,
                                                         cache: FetchCache,
                                                         tmp_path: Path) -> None:
    resource = Resource(BODY, cache_control="max-age=0")
    url = serve_resource(origin, "/m.bin", resource)
    conn = connect(cache)
    call(mode, conn, "download_file", url, tmp_path / "one.bin")
    call(mode, conn, "download_file", url, tmp_path / "two.bin")
    assert resource.not_modified == 1
    assert origin.bytes_sent == len(BODY)
    assert (tmp_path / "two.bin").read_bytes() == BODY
    resource.change(b"new weights")
    call(mode, conn, "download_file", url, tmp_path / "three.bin")
    assert (tmp_path / "three.bin").read_bytes() == b"new weights"


@pytest.mark.parametrize("mode", MODES)
def test_expected_sha256_is_served_from_any_url(mode: str, origin: Origin, cache: FetchCache,
                                                tmp_path: Path) -> None:
    first = serve_resource(origin, "/mirror-a", Resource(BODY, cache_control="no-cache"))
    second = origin.serve_bytes("/mirror-b", BODY)
    conn = connect(cache)
    call(mode, conn, "download_file", first, tmp_path / "a")
    call(mode, conn, "download_file", second, tmp_path / "b", expected_sha256=sha256(BODY))
    assert origin.count("/mirror-b") == 0
    assert (tmp_path / "b").read_bytes() == BODY


@pytest.mark.parametrize("mode", MODES)
def test_two_urls_with_the_same_body_share_one_blob(mode: str, origin: Origin,
                                                    cache: FetchCache) -> None:
    a = serve_resource(origin, "/a", Resource(BODY, cache_control="max-age=600"))
    b = serve_resource(origin, "/b", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    fetch(mode, conn, a)
    fetch(mode, conn, b)
    info = cache.info()
    assert (info.entries, info.blobs, info.bytes) == (2, 1, len(BODY))
    assert {item.sha256 for item in cache.entries()} == {sha256(BODY)}
    assert stored_bytes(cache, sha256(BODY)) == BODY
    assert cache.blobs.segments is not None
    records = [h for name in cache.blobs.segments.names() for _, h in
               cache.blobs.segments.scan(name)]
    assert [h.sha256 for h in records] == [sha256(BODY)]  # one record for both URLs


# --- offline and stale-if-error -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_origin_stopped_offline(mode: str, origin: Origin, cache: FetchCache,
                                tmp_path: Path) -> None:
    url = serve_resource(origin, "/cached", Resource(BODY, cache_control="max-age=0"))
    connect(cache).get_bytes(url)
    uncached = origin.url("/never-fetched?token=secret")
    origin.stop()
    conn = connect(cache, offline=True)
    assert fetch(mode, conn, url) == BODY  # stale, yet offline serves it
    call(mode, conn, "download_file", url, tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == BODY
    with pytest.raises(OfflineError) as info:
        fetch(mode, conn, uncached)
    assert "/never-fetched" in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(OfflineError):
        call(mode, conn, "download_file", uncached, tmp_path / "g")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("mode", MODES)
def test_offline_with_an_index_that_cannot_be_opened_says_so(
        mode: str, origin: Origin, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Not "not in the cache": what the cache holds is unknown (here its database file is a
    directory; a read-only recording does the same to SQLite's write-ahead log)."""
    url = serve_resource(origin, "/x", Resource(BODY, cache_control="max-age=600"))
    (tmp_path / "cache" / "index" / "cache.db").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        store = FetchCache(tmp_path / "cache")
    conn = connect(store, offline=True)
    with pytest.raises(CacheUnreadableError) as info:
        fetch(mode, conn, url + "?sig=secret")
    message = str(info.value)
    assert "cannot be opened" in message and str(store.index.directory) in message
    assert "/x" in message and "secret" not in message
    assert isinstance(info.value, OfflineError)
    assert origin.count("/x") == 0
    store.close()


@pytest.mark.parametrize("mode", MODES)
def test_an_offline_miss_says_not_in_the_cache(mode: str, cache: FetchCache) -> None:
    conn = connect(cache, offline=True)
    with pytest.raises(OfflineError) as info:
        fetch(mode, conn, "http://127.0.0.1:9/never")
    assert not isinstance(info.value, CacheUnreadableError)
    assert str(info.value) == "offline mode: http://127.0.0.1:9/never is not in the cache"


@pytest.mark.parametrize("mode", MODES)
def test_origin_stopped_stale_if_error(mode: str, origin: Origin, cache: FetchCache,
                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = serve_resource(origin, "/s", Resource(BODY, cache_control="max-age=0"))
    conn = connect(cache)
    fetch(mode, conn, url)
    missing = origin.url("/not-cached")
    origin.stop()
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        assert fetch(mode, conn, url) == BODY
        call(mode, conn, "download_file", url, tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == BODY
    assert any("stale cached copy" in r.getMessage() for r in caplog.records)
    with pytest.raises(FetchConnectionError):
        fetch(mode, conn, missing)


@pytest.mark.parametrize("mode", MODES)
def test_5xx_serves_stale_with_a_warning(mode: str, origin: Origin, cache: FetchCache,
                                         caplog: pytest.LogCaptureFixture,
                                         tmp_path: Path) -> None:
    resource = Resource(BODY, cache_control="max-age=0")
    url = serve_resource(origin, "/flaky", resource)
    conn = connect(cache)
    fetch(mode, conn, url)
    origin.serve_bytes("/flaky", b"down", status=503)
    never_retry_503 = HTTPConnection(cache=cache, retry=RetryPolicy(
        max_attempts=1, retry_statuses=frozenset()))
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        assert fetch(mode, conn, url) == BODY
        for i, client in enumerate((conn, never_retry_503)):
            call(mode, client, "download_file", url, tmp_path / f"f{i}")
            assert (tmp_path / f"f{i}").read_bytes() == BODY
    assert sum("HTTP 503" in r.getMessage() for r in caplog.records) == 3


# --- privacy and switches -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_authorized_responses_are_not_served_to_others(mode: str, origin: Origin,
                                                       cache: FetchCache, tmp_path: Path) -> None:
    url = serve_resource(origin, "/me", Resource(b"alice's data", cache_control="max-age=600"))
    alice = {"Authorization": "Bearer alice"}
    conn = connect(cache)
    assert fetch(mode, conn, url, extra_headers=alice) == b"alice's data"
    assert fetch(mode, conn, url) == b"alice's data"  # from the origin, not alice's copy
    assert origin.count("/me") == 2
    cookie_url = serve_resource(origin, "/cart", Resource(b"cart", cache_control="max-age=600"))
    fetch(mode, conn, cookie_url, extra_headers={"Cookie": "session=1"})
    fetch(mode, conn, cookie_url)
    assert origin.count("/cart") == 2
    private = FetchCache(tmp_path / "mine", allow_private=True)  # a cache one caller owns
    mine = connect(private)
    fetch(mode, mine, url, extra_headers=alice)
    fetch(mode, mine, url, extra_headers=alice)
    assert origin.count("/me") == 3
    private.close()


@pytest.mark.parametrize("mode", MODES)
def test_private_responses_are_not_shared(mode: str, origin: Origin, cache: FetchCache) -> None:
    url = serve_resource(origin, "/p", Resource(b"p", cache_control="private, max-age=600"))
    conn = connect(cache)
    fetch(mode, conn, url)
    fetch(mode, conn, url)
    assert origin.count("/p") == 2
    assert cache.info().entries == 0


@pytest.mark.parametrize("mode", MODES)
def test_use_cache_false_and_cache_false(mode: str, origin: Origin, cache: FetchCache,
                                         tmp_path: Path) -> None:
    url = serve_resource(origin, "/x", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    fetch(mode, conn, url, use_cache=False)
    call(mode, conn, "download_file", url, tmp_path / "x", use_cache=False)
    assert cache.info().entries == 0
    fetch(mode, conn, url)
    fetch(mode, conn, url, use_cache=False)
    assert origin.count("/x") == 4
    off = connect(False)
    assert off.cache is None
    fetch(mode, off, url)
    assert origin.count("/x") == 5


def test_disable_cache_env(monkeypatch: pytest.MonkeyPatch, origin: Origin) -> None:
    monkeypatch.setenv("VLLM_FETCH_DISABLE_CACHE", "1")
    conn = HTTPConnection(retry=RetryPolicy.none())
    assert conn.cache is None
    url = serve_resource(origin, "/d", Resource(b"d", cache_control="max-age=600"))
    conn.get_bytes(url)
    conn.get_bytes(url)
    assert origin.count("/d") == 2


def test_default_cache_lives_in_cache_dir_env(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("VLLM_FETCH_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setenv("VLLM_FETCH_CACHE_SIZE", "5MB")
    cache = HTTPConnection().cache
    assert cache is not None
    assert cache.directory == tmp_path / "env-cache" and cache.size_limit == 5_000_000


def test_cache_path_argument(origin: Origin, tmp_path: Path) -> None:
    url = serve_resource(origin, "/p", Resource(b"x", cache_control="max-age=600"))
    HTTPConnection(cache=tmp_path / "c").get_bytes(url)
    HTTPConnection(cache=str(tmp_path / "c")).get_bytes(url)
    assert origin.count("/p") == 1


@pytest.mark.parametrize("mode", MODES)
def test_offline_raw_responses_refused(mode: str, origin: Origin, cache: FetchCache) -> None:
    conn = connect(cache, offline=True)
    url = origin.serve_bytes("/raw", b"x")
    with pytest.raises(OfflineError):
        if mode == "sync":
            conn.get_response(url)
        else:
            asyncio.run(conn.get_async_response(url))  # type: ignore[arg-type]
    assert origin.requests == []


# --- limits and damage --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_eviction_keeps_the_cache_under_its_limit(mode: str, origin: Origin,
                                                  tmp_path: Path) -> None:
    # 20 KB bodies occupy 22 KB each with their entry, the empty index 32 KB: two fit in 90 KB
    cache = FetchCache(tmp_path / "small", size_limit=90_000)
    conn = connect(cache)
    bodies = [os.urandom(20_000) for _ in range(5)]
    urls = [serve_resource(origin, f"/e{i}", Resource(b, cache_control="max-age=600"))
            for i, b in enumerate(bodies)]
    for url in urls:
        fetch(mode, conn, url)
    info = cache.info()
    assert info.bytes <= 90_000 and info.blobs == 2
    assert {item.sha256 for item in cache.entries()} == {sha256(b) for b in bodies[-2:]}
    assert fetch(mode, conn, urls[-1]) == bodies[-1]
    assert origin.count("/e4") == 1  # the most recent stayed
    assert fetch(mode, conn, urls[0]) == bodies[0]
    assert origin.count("/e0") == 2  # the oldest was evicted
    cache.close()


@pytest.mark.parametrize("mode", MODES)
def test_corrupt_index_file_does_not_break_fetching(mode: str, origin: Origin, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    url = serve_resource(origin, "/c", Resource(BODY, cache_control="max-age=600"))
    first = FetchCache(tmp_path / "c")
    fetch(mode, connect(first), url)
    db = tmp_path / "c" / "index" / "cache.db"
    db.write_bytes(os.urandom(8192))  # garbage over the sqlite file while it is open ...
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        assert fetch(mode, connect(first), url) == BODY
        first.close()
        db.write_bytes(b"this is not a database" * 100)  # ... and before it is opened
        second = FetchCache(tmp_path / "c")
        assert fetch(mode, connect(second), url) == BODY
        assert fetch(mode, connect(second), url) == BODY  # the rebuilt index works
    assert any("cache index" in r.getMessage() for r in caplog.records)
    assert origin.count("/c") <= 3
    assert second.info().entries == 1
    second.close()


@pytest.mark.parametrize("mode", MODES)
def test_disk_full_while_caching_is_a_warning(mode: str, origin: Origin, cache: FetchCache,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture,
                                              tmp_path: Path) -> None:
    def dev_full() -> tuple[int, Path]:  # writes fail with a real ENOSPC from the kernel
        return os.open("/dev/full", os.O_WRONLY), tmp_path / "never-created"

    def full_segment() -> _Active:  # a small body's segment: the same ENOSPC
        return _Active("full.seg", os.open("/dev/full", os.O_WRONLY), 0, os.getpid())

    monkeypatch.setattr(cache.blobs, "_temp", dev_full)
    assert cache.blobs.segments is not None
    monkeypatch.setattr(cache.blobs.segments, "_create", full_segment)
    url = serve_resource(origin, "/big", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        assert fetch(mode, conn, url) == BODY
        call(mode, conn, "download_file", url, tmp_path / "big.bin")
        cache.flush()  # bodies are written behind the call
    assert (tmp_path / "big.bin").read_bytes() == BODY
    # the body could not be written; the downloaded file needs no write: it is linked in
    assert sum("cannot cache" in r.getMessage() for r in caplog.records) == 1
    assert cache.info().entries == 1
    assert [item.stored_as for item in cache.entries()] == ["shared"]


@pytest.mark.parametrize("mode", MODES)
def test_a_cache_that_fails_every_store_alike_warns_once(mode: str, origin: Origin,
                                                         cache: FetchCache,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    def disk_full(items: object) -> object:  # every small body's append: a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    segments = cache.blobs.segments
    assert segments is not None
    urls = [serve_resource(origin, f"/small{i}", Resource(b"s%d" % i, cache_control="max-age=600"))
            for i in range(3)]
    conn = connect(cache)

    def fetch_each() -> list[logging.LogRecord]:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="vllm_fetch"):
            for url in urls:
                assert fetch(mode, conn, url).startswith(b"s")
                cache.flush()  # one write (and one failure) each
        return [r for r in caplog.records if "cannot cache" in r.getMessage()]

    monkeypatch.setattr(segments, "append", disk_full)
    told = fetch_each()
    assert [r.levelno for r in told] == [logging.WARNING, logging.DEBUG, logging.DEBUG], told
    assert cache.info().entries == 0
    # space comes back and a store works; when the disk fills again, that is news again
    monkeypatch.undo()
    again = serve_resource(origin, "/fits", Resource(b"fits", cache_control="max-age=600"))
    assert fetch(mode, conn, again) == b"fits"
    cache.flush()
    assert cache.info().entries == 1
    monkeypatch.setattr(segments, "append", disk_full)
    told = fetch_each()
    assert [r.levelno for r in told] == [logging.WARNING, logging.DEBUG, logging.DEBUG], told


# --- single flight ------------------------------------------------------------------------------


def _slow(origin: Origin, body: bytes) -> str:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        origin.count_sent(len(body))
        return web.Response(body=body, headers={"Cache-Control": "no-store"})

    return origin.route("/slow", handler)


def test_concurrent_threads_make_one_transfer(origin: Origin, cache: FetchCache) -> None:
    url = _slow(origin, BODY)
    conn = connect(cache)
    together = threading.Barrier(8)  # all eight ask while the first transfer is under way

    def get(_: int) -> str:
        together.wait(10)
        return sha256(conn.get_bytes(url))

    with ThreadPoolExecutor(8) as pool:
        digests = set(pool.map(get, range(8)))
    conn.close()
    assert digests == {sha256(BODY)}
    assert origin.count("/slow") == 1


def test_concurrent_tasks_make_one_transfer(origin: Origin, cache: FetchCache) -> None:
    url = _slow(origin, BODY)

    async def main() -> set[str]:
        async with connect(cache) as conn:
            bodies = await asyncio.gather(*(conn.async_get_bytes(url) for _ in range(8)))
        return {sha256(b) for b in bodies}

    assert asyncio.run(main()) == {sha256(BODY)}
    assert origin.count("/slow") == 1


@pytest.mark.parametrize("mode", MODES)
def test_max_bytes_applies_to_cached_bodies(mode: str, origin: Origin, cache: FetchCache) -> None:
    url = serve_resource(origin, "/cap", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    fetch(mode, conn, url)
    with pytest.raises(SizeLimitExceededError):
        fetch(mode, conn, url, max_bytes=1000)
    assert origin.count("/cap") == 1


@pytest.mark.parametrize("mode", MODES)
def test_304_that_forbids_storing_drops_the_entry(mode: str, origin: Origin,
                                                  cache: FetchCache) -> None:
    resource = Resource(BODY, cache_control="max-age=0")
    url = serve_resource(origin, "/gone-private", resource)
    conn = connect(cache)
    fetch(mode, conn, url)
    resource.cache_control = "no-store"
    assert fetch(mode, conn, url) == BODY  # the 304 still serves the stored body ...
    assert resource.not_modified == 1
    assert cache.info().entries == 0  # ... but nothing is kept any more


def _slow_cacheable(origin: Origin, body: bytes) -> str:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        origin.count_sent(len(body))
        return web.Response(body=body, headers={"Cache-Control": "max-age=600"})

    return origin.route("/weights", handler)


def test_concurrent_downloads_make_one_transfer(origin: Origin, cache: FetchCache,
                                                tmp_path: Path) -> None:
    url = _slow_cacheable(origin, BODY)
    conn = connect(cache)
    targets = [tmp_path / f"w{i}.bin" for i in range(4)]
    together = threading.Barrier(4)

    def download(target: Path) -> Path:
        together.wait(10)
        return conn.download_file(url, target)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(download, targets))
    conn.close()
    assert {sha256(t.read_bytes()) for t in targets} == {sha256(BODY)}
    assert origin.count("/weights") == 1


def test_concurrent_async_downloads_make_one_transfer(origin: Origin, cache: FetchCache,
                                                      tmp_path: Path) -> None:
    url = _slow_cacheable(origin, BODY)
    targets = [tmp_path / f"w{i}.bin" for i in range(4)]

    async def main() -> None:
        async with connect(cache) as conn:
            await asyncio.gather(*(conn.async_download_file(url, t) for t in targets))

    asyncio.run(main())
    assert {sha256(t.read_bytes()) for t in targets} == {sha256(BODY)}
    assert origin.count("/weights") == 1


def test_cache_argument_forms(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    with pytest.raises(OSError):
        HTTPConnection(cache=not_a_dir / "cache")  # fails now, not at the first fetch
    with pytest.raises(TypeError):
        HTTPConnection(cache=cast(Any, 42))
    default = HTTPConnection(cache=True).cache
    assert default is not None and default.directory == Path(os.environ["VLLM_FETCH_CACHE_DIR"])


@pytest.mark.parametrize("mode", MODES)
def test_offline_env_is_read_at_call_time(mode: str, origin: Origin, cache: FetchCache,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url = serve_resource(origin, "/late", Resource(b"late", cache_control="max-age=0"))
    conn = connect(cache)  # created before the test suite turns offline mode on
    fetch(mode, conn, url)
    monkeypatch.setenv("VLLM_FETCH_OFFLINE", "1")
    assert fetch(mode, conn, url) == b"late"
    with pytest.raises(OfflineError):
        fetch(mode, conn, origin.url("/other"))
    assert origin.count("/late") == 1 and origin.count("/other") == 0


@pytest.mark.parametrize("mode", MODES)
def test_disk_full_while_copying_a_hit_is_a_disk_error(mode: str, origin: Origin,
                                                       cache: FetchCache, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url = serve_resource(origin, "/full", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    fetch(mode, conn, url)
    out = tmp_path / "out"
    out.mkdir()
    temp = out / ".full.tmp"

    def dev_full_temp(target: Path) -> tuple[int, Path]:  # the target's disk is full
        temp.write_bytes(b"")
        return os.open("/dev/full", os.O_WRONLY), temp

    # the temp file beside the target, for a blob file's copy and a segment record's alike
    monkeypatch.setattr("vllm_fetch.files.create_temp", dev_full_temp)
    with pytest.raises(DiskError):
        call(mode, conn, "download_file", url, out / "model.bin")
    assert leftovers(out) == []
    assert origin.count("/full") == 1  # not retried over the network either


@pytest.mark.parametrize("mode", MODES)
def test_304_for_another_version_refetches(mode: str, origin: Origin, cache: FetchCache,
                                           tmp_path: Path) -> None:
    """A 304 whose ETag matches nothing stored updates nothing (RFC 9111 §4.3.4): fetch again."""
    state = {"version": "a"}

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"ETag": f'"{state["version"]}"', "Cache-Control": "max-age=0"}
        if request.headers.get("If-None-Match"):
            return web.Response(status=304, headers=headers)  # whatever was asked for
        return web.Response(body=f"body {state['version']}".encode(), headers=headers)

    url = origin.route("/odd", handler)
    conn = connect(cache)
    assert fetch(mode, conn, url) == b"body a"
    state["version"] = "b"
    assert fetch(mode, conn, url) == b"body b"
    state["version"] = "c"
    call(mode, conn, "download_file", url, tmp_path / "odd")
    assert (tmp_path / "odd").read_bytes() == b"body c"
    conditional = [s.headers.get("If-None-Match") for s in origin.seen("/odd")]
    assert conditional == [None, '"a"', None, '"b"', None]


@pytest.mark.parametrize("mode", MODES)
def test_vary_selects_the_stored_variant(mode: str, origin: Origin, cache: FetchCache) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        language = request.headers.get("Accept-Language", "")
        return web.Response(body=f"hello in {language}".encode(),
                            headers={"Vary": "Accept-Language", "Cache-Control": "max-age=600"})

    url = origin.route("/hello", handler)
    conn = connect(cache)
    en, fr = {"Accept-Language": "en"}, {"Accept-Language": "fr"}
    assert fetch(mode, conn, url, extra_headers=en) == b"hello in en"
    assert fetch(mode, conn, url, extra_headers=en) == b"hello in en"
    assert origin.count("/hello") == 1
    assert fetch(mode, conn, url, extra_headers=fr) == b"hello in fr"  # never the en variant
    assert fetch(mode, conn, url, extra_headers=fr) == b"hello in fr"
    assert origin.count("/hello") == 2
