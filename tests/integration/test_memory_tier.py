"""The memory tier in front of the disk cache (issues 13, 15, 17: the fresh hit under 25 µs).

A fresh body read from disk (and checked) is kept in memory and served from there with zero
requests, the same bytes, headers and ``Age``, until any process changes its entry (the
generation file), its blob changes on disk (the blob's signature), it goes stale, or the
caller's URL policy, credentials or Vary values say otherwise. Sync and async.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.cache_origin import Resource, serve_resource
from tests.helpers import call, stored_bytes
from tests.integration.test_cache_integrity import flip_one_byte
from tests.origin import Origin, sha256
from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy, SizeLimitExceededError
from vllm_fetch.cache import blobs as blob_store
from vllm_fetch.cache.blobs import BlobStore

MODES = ["sync", "async"]
BODY = os.urandom(100 * 1024)
NEW_BODY = os.urandom(100 * 1024)
SCRIPT = Path(sys.executable).with_name("vllm-fetch")


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache")
    yield store
    store.close()


def connect(cache: FetchCache, **kwargs: Any) -> HTTPConnection:
    return HTTPConnection(retry=RetryPolicy.none(), cache=cache, **kwargs)


def settle() -> None:
    """Wait until a blob just written has a signature (its timestamps can show an edit)."""
    time.sleep(blob_store.SETTLE_NS / 1e9 + 0.05)


def warm(mode: str, conn: HTTPConnection, cache: FetchCache, url: str, **kwargs: Any) -> bytes:
    """Fetch ``url`` (a miss), let its blob settle, then read it from disk once: now held."""
    held = len(cache.memory or ())
    call(mode, conn, "get_bytes", url, **kwargs)
    cache.flush()
    settle()
    data: bytes = call(mode, conn, "get_bytes", url, **kwargs)
    assert len(cache.memory or ()) == held + 1
    return data


@pytest.fixture
def disk_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sha256 of every blob read from disk from now on."""
    reads: list[str] = []
    real = BlobStore.read

    def counting(self: BlobStore, sha: str, size: int, seal: str | None = None) -> bytes | None:
        reads.append(sha)
        return real(self, sha, size, seal)

    monkeypatch.setattr(BlobStore, "read", counting)
    return reads


def in_other_process(code: str, cache_dir: Path) -> str:
    """Run ``code`` (``CACHE`` is the cache directory) in a fresh interpreter."""
    script = f"CACHE = {str(cache_dir)!r}\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("mode", MODES)
def test_a_memory_hit_serves_the_bytes_with_zero_requests(
    mode: str, origin: Origin, cache: FetchCache, disk_reads: list[str]
) -> None:
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600",
                                                  extra={"X-Custom": "kept"}))
    conn = connect(cache)
    assert sha256(warm(mode, conn, cache, url)) == sha256(BODY)
    reads = len(disk_reads)
    for _ in range(5):
        assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    result = call(mode, conn, "fetch_bytes", url)
    assert len(disk_reads) == reads  # every one of them from memory
    assert origin.count("/img") == 1
    assert result.from_cache and result.status == 200 and result.sha256 == sha256(BODY)
    assert result.headers["X-Custom"] == "kept" and result.headers["ETag"] == '"v1"'
    assert result.headers["Age"] == str(result.age) and 0 <= result.age <= 5
    assert len(call(mode, conn, "get_text", url)) == len(BODY)  # latin-1: one char a byte
    assert len(disk_reads) == reads
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_body_another_process_refetched_is_seen_at_once(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    resource = Resource(BODY, cache_control="max-age=600")
    url = serve_resource(origin, "/img", resource)
    conn = connect(cache)
    warm(mode, conn, cache, url)
    resource.change(NEW_BODY)
    # the other process holds no memory tier of its own: it still announces what it wrote
    in_other_process(f"""
        from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy, SizeLimitExceededError
        cache = FetchCache(CACHE, memory_size=0)
        conn = HTTPConnection(cache=cache, retry=RetryPolicy.none())
        conn.get_bytes({url!r}, extra_headers={{"Cache-Control": "no-cache"}})
        cache.close()
    """, cache.directory)
    assert origin.count("/img") == 2
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(NEW_BODY)
    assert origin.count("/img") == 2  # the new body, from the cache
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_an_entry_another_process_changed_is_seen_though_its_blob_is_the_same(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    resource = Resource(BODY, cache_control="max-age=600", extra={"X-Version": "1"})
    url = serve_resource(origin, "/img", resource)
    conn = connect(cache)
    warm(mode, conn, cache, url)
    resource.extra["X-Version"] = "2"  # same bytes: only the index entry changes
    in_other_process(f"""
        from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy, SizeLimitExceededError
        cache = FetchCache(CACHE)
        HTTPConnection(cache=cache, retry=RetryPolicy.none()).get_bytes(
            {url!r}, extra_headers={{"Cache-Control": "no-cache"}})
        cache.close()
    """, cache.directory)
    result = call(mode, conn, "fetch_bytes", url)
    assert result.headers["X-Version"] == "2" and result.sha256 == sha256(BODY)
    assert origin.count("/img") == 2  # the other process's 304 refreshed the entry
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_cache_clear_in_another_process_makes_the_next_call_a_miss(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    warm(mode, conn, cache, url)
    done = subprocess.run([str(SCRIPT), "cache", "clear"], capture_output=True, text=True,
                          env={**os.environ, "VLLM_FETCH_CACHE_DIR": str(cache.directory)},
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    assert origin.count("/img") == 2
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_wiped_cache_directory_makes_the_next_call_a_miss(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    warm(mode, conn, cache, url)
    shutil.rmtree(cache.directory / "blobs")
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    assert origin.count("/img") == 2
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_flipped_byte_after_a_memory_hit_is_refetched(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    warm(mode, conn, cache, url)
    call(mode, conn, "get_bytes", url)  # a memory hit
    flip_one_byte(cache, BODY)
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    assert origin.count("/img") == 2  # the damaged blob was dropped and fetched again
    cache.flush()
    assert sha256(stored_bytes(cache, sha256(BODY))) == sha256(BODY)
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_an_entry_that_expires_in_memory_is_revalidated(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    resource = Resource(BODY, cache_control="max-age=3")
    url = serve_resource(origin, "/img", resource)
    conn = connect(cache)
    fetched_at = time.time()
    warm(mode, conn, cache, url)
    call(mode, conn, "get_bytes", url)  # a memory hit: its fresh verdict is remembered
    time.sleep(max(0.0, fetched_at + 3.2 - time.time()))  # stale now, and still held
    assert cache.memory is not None and len(cache.memory) == 1
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    assert origin.count("/img") == 2
    assert origin.seen("/img")[-1].headers.get("If-None-Match") == '"v1"'
    assert resource.not_modified == 1
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_request_directives_still_reach_the_origin(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    resource = Resource(BODY, cache_control="max-age=600")
    url = serve_resource(origin, "/img", resource)
    conn = connect(cache)
    warm(mode, conn, cache, url)
    call(mode, conn, "get_bytes", url)  # a memory hit: its fresh verdict is remembered
    for directive in ("no-cache", "max-age=0"):
        call(mode, conn, "get_bytes", url, extra_headers={"Cache-Control": directive})
    assert origin.count("/img") == 3
    assert resource.not_modified == 2
    conn.close()


def _by_token(origin: Origin) -> str:
    async def handler(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "none")
        return web.Response(body=f"for {token}".encode(),
                            headers={"Cache-Control": "public, max-age=600"})

    return origin.route("/me", handler)


@pytest.mark.parametrize("mode", MODES)
def test_other_credentials_never_get_a_tenants_memory_copy(
    mode: str, origin: Origin, tmp_path: Path
) -> None:
    cache = FetchCache(tmp_path / "own", allow_private=True)
    url = _by_token(origin)
    conn = connect(cache)
    alice = {"Authorization": "Bearer alice"}
    assert warm(mode, conn, cache, url, extra_headers=alice) == b"for Bearer alice"
    assert call(mode, conn, "get_bytes", url, extra_headers=alice) == b"for Bearer alice"
    assert origin.count("/me") == 1
    bob = call(mode, conn, "get_bytes", url, extra_headers={"Authorization": "Bearer bob"})
    assert bob == b"for Bearer bob"
    assert call(mode, conn, "get_bytes", url) == b"for none"
    assert origin.count("/me") == 3
    conn.close()
    cache.close()


def _by_language(origin: Origin) -> str:
    async def handler(request: web.Request) -> web.Response:
        language = request.headers.get("Accept-Language", "-")
        return web.Response(body=f"in {language}".encode(),
                            headers={"Cache-Control": "max-age=600", "Vary": "Accept-Language"})

    return origin.route("/hello", handler)


@pytest.mark.parametrize("mode", MODES)
def test_another_vary_value_never_gets_the_memory_copy(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    url = _by_language(origin)
    conn = connect(cache)
    english = {"Accept-Language": "en"}
    assert warm(mode, conn, cache, url, extra_headers=english) == b"in en"
    assert call(mode, conn, "get_bytes", url, extra_headers=english) == b"in en"
    assert origin.count("/hello") == 1
    french = call(mode, conn, "get_bytes", url, extra_headers={"Accept-Language": "fr"})
    assert french == b"in fr"
    assert origin.count("/hello") == 2
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_policy_refuses_a_url_whose_body_is_in_memory(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    signed = url + "?X-Amz-Signature=SECRET"
    open_conn = connect(cache)
    warm(mode, open_conn, cache, signed)
    for guarded in (connect(cache, allowed_domains=["images.example.com"]),
                    connect(cache, block_private_ips=True)):
        with pytest.raises(ValueError) as refused:
            call(mode, guarded, "get_bytes", signed)
        assert "SECRET" not in str(refused.value)
        guarded.close()
    assert origin.count("/img") == 1
    open_conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_with_the_memory_tier_off_hits_come_from_disk(
    mode: str, origin: Origin, tmp_path: Path, disk_reads: list[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_FETCH_MEMORY_CACHE_SIZE", "0")
    cache = FetchCache(tmp_path / "cache")
    assert cache.memory is None
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    call(mode, conn, "get_bytes", url)
    cache.flush()
    settle()
    for _ in range(3):
        assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    assert len(disk_reads) == 3 and origin.count("/img") == 1
    conn.close()
    cache.close()


def test_the_memory_size_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert FetchCache(tmp_path / "a", memory_size=0).memory is None
    sized = FetchCache(tmp_path / "b", memory_size="8MiB").memory
    assert sized is not None and sized.limit == 8 * 2**20
    monkeypatch.setenv("VLLM_FETCH_MEMORY_CACHE_SIZE", "2MB")
    from_env = FetchCache(tmp_path / "c").memory
    assert from_env is not None and from_env.limit == 2 * 10**6
    monkeypatch.delenv("VLLM_FETCH_MEMORY_CACHE_SIZE")
    default = FetchCache(tmp_path / "d").memory
    assert default is not None and default.limit == 64 * 2**20
    with pytest.raises(ValueError):
        FetchCache(tmp_path / "e", memory_size=-1)


@pytest.mark.parametrize("mode", MODES)
def test_bodies_over_the_item_limit_stay_on_disk(
    mode: str, origin: Origin, tmp_path: Path
) -> None:
    cache = FetchCache(tmp_path / "cache", memory_size="2MiB")
    big = os.urandom(2**20 + 1)
    url = serve_resource(origin, "/big", Resource(big, cache_control="max-age=600"))
    conn = connect(cache)
    call(mode, conn, "get_bytes", url)
    cache.flush()
    settle()
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(big)
    assert cache.memory is not None and len(cache.memory) == 0
    assert origin.count("/big") == 1
    conn.close()
    cache.close()


def _refetch_in_child(cache: FetchCache, url: str) -> None:
    held = cache.memory is not None and len(cache.memory) == 1  # inherited from the parent
    conn = connect(cache)
    conn.get_bytes(url, extra_headers={"Cache-Control": "no-cache"})
    cache.close()
    os._exit(0 if held else 3)


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX-only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_childs_write_voids_the_parents_memory_copy(
    origin: Origin, cache: FetchCache
) -> None:
    import multiprocessing

    resource = Resource(BODY, cache_control="max-age=600")
    url = serve_resource(origin, "/img", resource)
    conn = connect(cache)
    warm("sync", conn, cache, url)
    resource.change(NEW_BODY)
    child = multiprocessing.get_context("fork").Process(target=_refetch_in_child,
                                                        args=(cache, url))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert sha256(conn.get_bytes(url)) == sha256(NEW_BODY)
    assert origin.count("/img") == 2
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_repeated_memory_hits_carry_the_current_age_and_each_callers_cap(
    mode: str, origin: Origin, cache: FetchCache
) -> None:
    """A repeated hit is answered from the remembered verdict (and its last answer while the
    Age in whole seconds is the same): the Age still grows with time, and every caller's
    max_bytes still applies."""
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    warm(mode, conn, cache, url)
    first = call(mode, conn, "fetch_bytes", url)
    again = call(mode, conn, "fetch_bytes", url)
    assert first.from_cache and again.from_cache and sha256(again.content) == sha256(BODY)
    time.sleep(1.1)
    later = call(mode, conn, "fetch_bytes", url)
    assert later.age >= first.age + 1 and later.headers["Age"] == str(later.age)
    with pytest.raises(SizeLimitExceededError):
        call(mode, conn, "get_bytes", url, max_bytes=1000)
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    assert origin.count("/img") == 1
    conn.close()
