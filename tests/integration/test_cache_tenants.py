"""Faults S8/S10: one tenant's response never reaches another, sync and async (issue 13, item 2).

A response to a request carrying Authorization, Proxy-Authorization, Cookie, X-Api-Key, a field
named like a key or token, or URL userinfo is served only to a request with the same
credentials, whatever its Cache-Control says; where it is stored at all
(``allow_private=True``), its key holds a keyed hash of them.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache_origin import Resource, serve_resource
from tests.helpers import call
from tests.origin import Origin
from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy

MODES = ["sync", "async"]
SECRET = "S3CRET-t0ken"
OVERRIDES = ["public, max-age=600", "s-maxage=600", "must-revalidate, max-age=600",
             "max-age=600"]
CREDENTIALS = [
    {"Authorization": f"Bearer {SECRET}"},
    {"Proxy-Authorization": f"Basic {SECRET}"},
    {"Cookie": f"sid={SECRET}"},
    {"X-Api-Key": SECRET},
    # keys and tokens under other services' names (Azure, OpenStack, GitLab, Google, AWS)
    {"Api-Key": SECRET},
    {"X-Auth-Token": SECRET},
    {"Private-Token": SECRET},
    {"X-Goog-Api-Key": SECRET},
    {"X-Amz-Security-Token": SECRET},
]


@pytest.fixture(params=[False, True], ids=["shared", "allow_private"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache", allow_private=request.param)
    yield store
    store.close()


def connect(cache: FetchCache) -> HTTPConnection:
    return HTTPConnection(retry=RetryPolicy.none(), cache=cache)


def index_bytes(cache: FetchCache) -> bytes:
    cache.flush()
    return b"".join(p.read_bytes() for p in (cache.directory / "index").iterdir() if p.is_file())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cache_control", OVERRIDES)
@pytest.mark.parametrize("creds", CREDENTIALS, ids=lambda c: next(iter(c)))
def test_a_tenants_response_is_never_served_to_others(
    mode: str, cache_control: str, creds: dict[str, str], origin: Origin, cache: FetchCache
) -> None:
    url = serve_resource(origin, "/me", Resource(b"tenant A's data", cache_control=cache_control))
    conn = connect(cache)
    assert call(mode, conn, "get_bytes", url, extra_headers=creds) == b"tenant A's data"
    call(mode, conn, "get_bytes", url)  # no credentials
    other = {name: value.replace(SECRET, "other-tenant") for name, value in creds.items()}
    call(mode, conn, "get_bytes", url, extra_headers=other)
    seen = origin.seen("/me")
    assert len(seen) == 3  # neither the anonymous nor the other tenant got A's copy
    assert not any(SECRET in value for value in seen[1].headers.values())
    assert call(mode, conn, "get_bytes", url, extra_headers=creds) == b"tenant A's data"
    # A's own copy, where kept and fresh (s-maxage is for shared caches: A's copy is private)
    kept_fresh = cache.allow_private and "max-age" in cache_control
    assert origin.count("/me") == (3 if kept_fresh else 4)
    assert SECRET.encode() not in index_bytes(cache)
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_an_anonymous_copy_is_not_served_to_a_tenant(mode: str, origin: Origin,
                                                      cache: FetchCache) -> None:
    """The other direction: an authorized request never gets the anonymous copy (its answer
    could differ) and never overwrites it."""
    url = serve_resource(origin, "/r", Resource(b"public view", cache_control="max-age=600"))
    conn = connect(cache)
    call(mode, conn, "get_bytes", url)
    call(mode, conn, "get_bytes", url, extra_headers=CREDENTIALS[0])
    assert origin.count("/r") == 2
    call(mode, conn, "get_bytes", url)
    assert origin.count("/r") == 2  # the anonymous copy still stands
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_url_userinfo_is_a_tenant_of_its_own(mode: str, origin: Origin, tmp_path: Path) -> None:
    cache = FetchCache(tmp_path / "mine", allow_private=True)
    serve_resource(origin, "/u", Resource(b"alice", cache_control="public, max-age=600"))
    conn = connect(cache)
    alice = f"http://alice:{SECRET}@127.0.0.1:{origin.port}/u"
    assert call(mode, conn, "get_bytes", alice) == b"alice"
    assert call(mode, conn, "get_bytes", alice) == b"alice"
    assert origin.count("/u") == 1  # alice's own copy
    call(mode, conn, "get_bytes", f"http://alice:other@127.0.0.1:{origin.port}/u")
    call(mode, conn, "get_bytes", origin.url("/u"))
    assert origin.count("/u") == 3
    assert SECRET.encode() not in index_bytes(cache)
    key_file = cache.directory / "tenant.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    conn.close()
    cache.close()


@pytest.mark.parametrize("mode", MODES)
def test_vary_on_a_credential_records_no_credential(mode: str, origin: Origin,
                                                    tmp_path: Path) -> None:
    cache = FetchCache(tmp_path / "mine", allow_private=True)
    url = serve_resource(origin, "/v", Resource(b"v", cache_control="max-age=600",
                                                extra={"Vary": "Authorization, Accept"}))
    conn = connect(cache)
    creds = {"Authorization": f"Bearer {SECRET}", "Accept": "image/png"}
    call(mode, conn, "get_bytes", url, extra_headers=creds)
    call(mode, conn, "get_bytes", url, extra_headers=creds)
    assert origin.count("/v") == 1
    cache.flush()
    (entry,) = [e for _, e, _ in cache.index.items()]
    assert entry.vary == {"accept": "image/png"} and entry.private
    assert SECRET.encode() not in index_bytes(cache)
    conn.close()
    cache.close()


def test_tenants_share_entries_across_processes_of_one_directory(origin: Origin,
                                                                 tmp_path: Path) -> None:
    """The keyed hash uses the directory's secret, so a second cache object (as another
    process would open) finds the same tenant's entry."""
    url = serve_resource(origin, "/x", Resource(b"x", cache_control="max-age=600"))
    first = FetchCache(tmp_path / "c", allow_private=True)
    connect(first).get_bytes(url, extra_headers=CREDENTIALS[0])
    first.close()
    second = FetchCache(tmp_path / "c", allow_private=True)
    conn = connect(second)
    assert conn.get_bytes(url, extra_headers=CREDENTIALS[0]) == b"x"
    assert origin.count("/x") == 1
    conn.close()
    second.close()
