"""Fault D10: a flipped byte in a cached blob is never served, sync and async (issue 13, item 1).

Every read from the cache checks the seal kept in the index (xxh3-128): body hits, download hits,
the ``expected_sha256`` shortcut from another URL's copy and the offline replay. A mismatch drops
the entry and fetches again; offline it is a typed ``CachedBodyDamagedError`` naming the URL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache_origin import Resource, serve_resource
from tests.helpers import call, flip_stored_byte, stored_bytes
from tests.origin import Origin, sha256
from vllm_fetch import (
    CachedBodyDamagedError,
    FetchCache,
    HTTPConnection,
    IntegrityError,
    OfflineError,
    RetryPolicy,
)

MODES = ["sync", "async"]
BODY = os.urandom(100 * 1024)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache")
    yield store
    store.close()


def connect(cache: FetchCache, **kwargs: object) -> HTTPConnection:
    return HTTPConnection(retry=RetryPolicy.none(), cache=cache, **kwargs)  # type: ignore[arg-type]


def flip_one_byte(cache: FetchCache, body: bytes, at: int = 4321) -> Path:
    """Damage the stored body in place (its own file or its segment record), as bit rot or a
    stray write would."""
    path = flip_stored_byte(cache, sha256(body), at)
    assert sha256(stored_bytes(cache, sha256(body))) != sha256(body)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_damaged_body_hit_is_refetched(mode: str, origin: Origin, cache: FetchCache) -> None:
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    flip_one_byte(cache, BODY)
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    assert origin.count("/img") == 2  # the damaged copy was dropped and fetched again
    cache.flush()
    assert sha256(stored_bytes(cache, sha256(BODY))) == sha256(BODY)  # re-stored
    assert sha256(call(mode, conn, "get_bytes", url)) == sha256(BODY)
    assert origin.count("/img") == 2  # and served from the cache again
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_damaged_download_hit_is_refetched(mode: str, origin: Origin, cache: FetchCache,
                                           tmp_path: Path) -> None:
    url = serve_resource(origin, "/w.bin", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    call(mode, conn, "download_file", url, tmp_path / "a.bin")
    flip_one_byte(cache, BODY)
    call(mode, conn, "download_file", url, tmp_path / "b.bin")
    assert sha256((tmp_path / "b.bin").read_bytes()) == sha256(BODY)
    assert origin.count("/w.bin") == 2
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_expected_sha256_shortcut_never_publishes_damage(mode: str, origin: Origin,
                                                         cache: FetchCache,
                                                         tmp_path: Path) -> None:
    first = serve_resource(origin, "/one", Resource(BODY, cache_control="max-age=600"))
    other = serve_resource(origin, "/two", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    call(mode, conn, "get_bytes", first)
    flip_one_byte(cache, BODY)
    target = tmp_path / "model.bin"
    call(mode, conn, "download_file", other, target, expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert origin.count("/two") == 1  # the damaged copy of /one was not used
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".model")] == []
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_offline_damage_is_a_typed_error(mode: str, origin: Origin, cache: FetchCache,
                                         tmp_path: Path) -> None:
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    call(mode, conn, "get_bytes", url + "?X-Amz-Signature=SECRET")
    call(mode, conn, "download_file", url + "?X-Amz-Signature=SECRET", tmp_path / "a.bin")
    flip_one_byte(cache, BODY)
    offline = connect(cache, offline=True)
    with pytest.raises(CachedBodyDamagedError) as err:
        call(mode, offline, "get_bytes", url + "?X-Amz-Signature=SECRET")
    assert isinstance(err.value, IntegrityError) and isinstance(err.value, OfflineError)
    assert "/img" in str(err.value) and "SECRET" not in str(err.value)
    target = tmp_path / "b.bin"
    with pytest.raises(OfflineError):  # the entry is gone now: a plain offline miss
        call(mode, offline, "download_file", url + "?X-Amz-Signature=SECRET", target)
    assert not target.exists()
    assert origin.count("/img") == 1
    conn.close()
    offline.close()


@pytest.mark.parametrize("mode", MODES)
def test_offline_damaged_download_hit_is_a_typed_error(mode: str, origin: Origin,
                                                       cache: FetchCache,
                                                       tmp_path: Path) -> None:
    url = serve_resource(origin, "/w.bin", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    call(mode, conn, "download_file", url, tmp_path / "a.bin")
    flip_one_byte(cache, BODY)
    offline = connect(cache, offline=True)
    target = tmp_path / "b.bin"
    with pytest.raises(CachedBodyDamagedError, match=r"/w\.bin"):
        call(mode, offline, "download_file", url, target, expected_sha256=sha256(BODY))
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "cache"]  # no temp file
    assert origin.count("/w.bin") == 1
    conn.close()
    offline.close()


def test_seal_is_kept_in_the_index_entry(origin: Origin, cache: FetchCache) -> None:
    """The seal is stored in the index entry (so the hit pays no second lookup)."""
    url = serve_resource(origin, "/img", Resource(BODY, cache_control="max-age=600"))
    conn = connect(cache)
    conn.get_bytes(url)
    cache.flush()
    (entry,) = [e for _, e, _ in cache.index.items()]
    assert len(entry.seal) == 32 and cache.index.seal_of(entry.sha256) == entry.seal
    conn.close()
