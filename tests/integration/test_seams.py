"""Where the pieces meet: the cache with the URL policy, max_bytes, offline replay of redirects,
expected_sha256 and resume, against a real loopback origin, sync and async."""

from __future__ import annotations

import gzip
import logging
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.cache_origin import Resource, serve_resource
from tests.helpers import call, leftovers
from tests.integration.test_tls_pinning import ca, trusting  # noqa: F401 - fixtures
from tests.netsafety import CountingListener, StubResolver
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from tests.rawserver import RawServer, read_head
from vllm_fetch import (
    BlockedURLError,
    ChecksumMismatchError,
    FetchCache,
    HTTPConnection,
    RetryPolicy,
    SizeLimitExceededError,
    TruncatedBodyError,
)

MODES = ["sync", "async"]
BODY = os.urandom(32 * 1024 + 5)
FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.02)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache")
    yield store
    store.close()


@pytest.fixture
def origin2() -> Iterator[Origin]:
    """An origin on 127.0.0.2: exempt from block_private_ips via allowed_networks."""
    server = Origin(host="127.0.0.2").start()
    yield server
    server.stop()


def get(mode: str, conn: HTTPConnection, method: str, url: str, out: Path) -> bytes:
    if method == "download_file":
        return Path(call(mode, conn, method, url, out)).read_bytes()
    data: bytes = call(mode, conn, method, url)
    return data


# --- policy before cache -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["get_bytes", "download_file"])
def test_cached_body_of_a_private_name_is_refused_under_block_private_ips(
    mode: str, method: str, origin: Origin, cache: FetchCache, tmp_path: Path
) -> None:
    """A trusted job caches http://internal.test/ (a name for 127.0.0.1); a guarded connection
    sharing the cache must not be handed that body: the check it would make on the network
    (the resolved address) has to hold for what the cache serves too."""
    serve_resource(origin, "/secret", Resource(b"internal data", cache_control="max-age=600"))
    resolver = StubResolver({"internal.test": ["127.0.0.1"]})
    url = f"http://internal.test:{origin.port}/secret"
    trusted = HTTPConnection(cache=cache, retry=RetryPolicy.none(), resolver=resolver)
    assert get(mode, trusted, method, url, tmp_path / "trusted") == b"internal data"
    guarded = HTTPConnection(cache=cache, retry=RetryPolicy.none(), resolver=resolver,
                             block_private_ips=True)
    with pytest.raises(BlockedURLError):
        get(mode, guarded, method, url, tmp_path / "guarded")
    assert origin.count("/secret") == 1
    assert not (tmp_path / "guarded").exists()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["get_bytes", "download_file"])
def test_cached_redirect_out_of_allowed_domains_is_refused(
    mode: str, method: str, origin: Origin, cache: FetchCache, tmp_path: Path
) -> None:
    """public.test redirected to other.test when it was recorded: a connection limited to
    public.test gets the redirect refused, not the other host's body from the cache."""
    resolver = StubResolver({"public.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    origin.serve_bytes("/moved", b"", status=302,
                       headers={"Location": f"http://other.test:{origin.port}/there"})
    serve_resource(origin, "/there", Resource(b"other host", cache_control="max-age=600"))
    url = f"http://public.test:{origin.port}/moved"
    anyone = HTTPConnection(cache=cache, retry=RetryPolicy.none(), resolver=resolver)
    assert get(mode, anyone, method, url, tmp_path / "anyone") == b"other host"
    limited = HTTPConnection(cache=cache, retry=RetryPolicy.none(), resolver=resolver,
                             allowed_domains=["public.test"])
    with pytest.raises(BlockedURLError):
        get(mode, limited, method, url, tmp_path / "limited")
    assert not (tmp_path / "limited").exists()


@pytest.mark.parametrize("mode", MODES)
def test_naming_the_sha256_of_a_private_body_does_not_fetch_it_from_the_cache(
    mode: str, origin: Origin, origin2: Origin, cache: FetchCache, tmp_path: Path
) -> None:
    """The content-addressed shortcut (any URL, same sha256) stays in the shared namespace."""
    serve_resource(origin, "/weights", Resource(b"gated weights", cache_control="max-age=600"))
    resolver = StubResolver({"internal.test": ["127.0.0.1"], "public.test": ["127.0.0.2"]})
    trusted = HTTPConnection(cache=cache, retry=RetryPolicy.none(), resolver=resolver)
    call(mode, trusted, "download_file", f"http://internal.test:{origin.port}/weights",
         tmp_path / "trusted.bin")
    origin2.serve_bytes("/w", b"what the public host serves")
    guarded = HTTPConnection(cache=cache, retry=RetryPolicy.none(), resolver=resolver,
                             block_private_ips=True, allowed_networks=["127.0.0.2/32"])
    with pytest.raises(ChecksumMismatchError):  # the network answered, not the cache
        call(mode, guarded, "download_file", f"http://public.test:{origin2.port}/w",
             tmp_path / "guarded.bin", expected_sha256=sha256(b"gated weights"))
    assert origin2.count("/w") == 1 and not (tmp_path / "guarded.bin").exists()


@pytest.mark.parametrize("mode", MODES)
def test_a_guarded_connection_still_caches_what_it_fetched(
    mode: str, origin2: Origin, cache: FetchCache, tmp_path: Path
) -> None:
    """The policy's own namespace: what a guarded connection fetched is a hit for it."""
    serve_resource(origin2, "/img", Resource(BODY, cache_control="max-age=600"))
    resolver = StubResolver({"cdn.test": ["127.0.0.2"]})
    url = f"http://cdn.test:{origin2.port}/img"

    def guarded() -> HTTPConnection:
        return HTTPConnection(cache=cache, retry=RetryPolicy.none(), resolver=resolver,
                              block_private_ips=True, allowed_networks=["127.0.0.2/32"])

    assert get(mode, guarded(), "get_bytes", url, tmp_path / "a") == BODY
    assert get(mode, guarded(), "download_file", url, tmp_path / "b") == BODY
    assert origin2.count("/img") == 1


# --- offline replay of a URL that redirected ---------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_offline_replays_a_url_that_redirected_when_recorded(
    mode: str, origin: Origin, cache: FetchCache, tmp_path: Path
) -> None:
    origin.serve_bytes("/latest", b"", status=302, headers={"Location": "/v2/model.bin"})
    serve_resource(origin, "/v2/model.bin", Resource(BODY, cache_control="max-age=0"))
    url = origin.url("/latest")
    recorder = HTTPConnection(cache=cache, retry=RetryPolicy.none())
    assert get(mode, recorder, "get_bytes", url, tmp_path / "x") == BODY
    origin.stop()
    replay = HTTPConnection(cache=cache, retry=RetryPolicy.none(), offline=True)
    assert get(mode, replay, "get_bytes", url, tmp_path / "x") == BODY
    assert get(mode, replay, "download_file", url, tmp_path / "model.bin") == BODY
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["model.bin"]


# --- max_bytes on what the cache serves -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_max_bytes_refuses_a_cached_download(mode: str, origin: Origin, cache: FetchCache,
                                             tmp_path: Path) -> None:
    url = serve_resource(origin, "/big", Resource(BODY, cache_control="max-age=600"))
    out = tmp_path / "out"
    out.mkdir()
    call(mode, HTTPConnection(cache=cache, retry=RetryPolicy.none()), "download_file", url,
         out / "first.bin")
    capped = HTTPConnection(cache=cache, retry=RetryPolicy.none(), max_bytes=1024)
    with pytest.raises(SizeLimitExceededError):
        call(mode, capped, "download_file", url, out / "hit.bin")
    with pytest.raises(SizeLimitExceededError):  # the content-addressed shortcut too
        call(mode, capped, "download_file", origin.url("/elsewhere"), out / "sha.bin",
             expected_sha256=sha256(BODY))
    assert leftovers(out) == ["first.bin"]
    assert origin.count("/big") == 1 and origin.count("/elsewhere") == 0


# --- expected_sha256 mismatch poisons nothing ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_sha256_mismatch_leaves_no_cache_entry(mode: str, origin: Origin, cache: FetchCache,
                                               tmp_path: Path) -> None:
    url = serve_resource(origin, "/w", Resource(BODY, cache_control="max-age=600"))
    conn = HTTPConnection(cache=cache, retry=RetryPolicy.none())
    wrong = sha256(b"not this")
    with pytest.raises(ChecksumMismatchError):
        call(mode, conn, "download_file", url, tmp_path / "w.bin", expected_sha256=wrong)
    cache.flush()
    assert not (tmp_path / "w.bin").exists()
    assert cache.info().entries == 0 and cache.info().blobs == 0
    # the body itself was fine: stored once fetched right, and served whole from then on
    call(mode, conn, "download_file", url, tmp_path / "w.bin", expected_sha256=sha256(BODY))
    with pytest.raises(ChecksumMismatchError):  # a stored body that does not fit is not used
        call(mode, conn, "download_file", url, tmp_path / "v.bin", expected_sha256=wrong)
    assert not (tmp_path / "v.bin").exists()
    assert [(e.sha256, e.size) for e in cache.entries()] == [(sha256(BODY), len(BODY))]
    assert call(mode, conn, "get_bytes", url) == BODY
    assert origin.count("/w") == 3


# --- resume inside one call, with the cache on -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_download_resumed_by_a_retry_is_cached_whole(mode: str, origin: Origin,
                                                     cache: FetchCache, tmp_path: Path) -> None:
    size = 512 * 1024 + 3
    data = os.urandom(size)
    url = RangeFile(data, cuts={0: size // 3}).mount(origin, "/r")
    conn = HTTPConnection(cache=cache, retry=FAST)
    target = tmp_path / "r.bin"
    call(mode, conn, "download_file", url, target, connections=1)
    seen = origin.seen("/r")
    assert len(seen) == 2 and seen[1].headers["Range"] == f"bytes={size // 3}-"
    assert target.read_bytes() == data
    cache.flush()
    assert [(e.size, e.sha256) for e in cache.entries()] == [(size, sha256(data))]
    assert call(mode, conn, "get_bytes", url) == data
    assert len(origin.seen("/r")) == 2


# --- S6 on a redirect hop: parser differentials in Location ------------------------------------

DIFFERENTIAL_LOCATIONS = [
    "http://evil.test\\@good.test:{good}/ok", "http://good.test%2f@evil.test:{evil}/x",
    "//evil.test:{evil}/x", "/\\evil.test:{evil}/x", "http://evil.test:{evil}\\.good.test/x",
    "http://evil.test:{evil}#@good.test/x", "http://good.test:{good}@evil.test:{evil}/x",
    " http://evil.test:{evil}/x", "http://evil.test%09:{evil}/x", "HTTP://EVIL.test:{evil}/x",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("location", DIFFERENTIAL_LOCATIONS)
def test_s6_differentials_in_a_redirect_never_reach_another_host(
    mode: str, location: str, origin: Origin
) -> None:
    evil = CountingListener("127.0.0.2")
    try:
        resolver = StubResolver({"good.test": ["127.0.0.1"], "evil.test": ["127.0.0.2"]})
        origin.serve_bytes("/ok", b"fine")
        origin.serve_bytes("/go", b"", status=302,
                           headers={"Location": location.format(good=origin.port,
                                                                evil=evil.port)})
        conn = HTTPConnection(retry=RetryPolicy.none(), cache=False, resolver=resolver,
                              allowed_domains=["good.test"])
        with pytest.raises(ValueError):  # InvalidURLError or BlockedURLError
            call(mode, conn, "get_bytes", f"http://good.test:{origin.port}/go")
        assert resolver.lookups("evil.test") == 0 and evil.accepted == 0
        assert origin.count("/ok") == 0
    finally:
        evil.close()


# --- F8 / F11: resume against an origin that misbehaves or stalls --------------------------------


class IgnoresIfRange(RangeFile):
    """Answers every Range with a 206 of whatever it serves now, whatever If-Range says."""

    def _range(self, request: Any) -> tuple[int, int] | None:
        header = request.headers.get("Range")
        if header is None:
            return None
        return int(header.strip()[6:].split("-")[0]), len(self.data) - 1


@pytest.mark.parametrize("mode", MODES)
def test_f8_a_206_of_another_version_is_never_spliced(mode: str, origin: Origin,
                                                      tmp_path: Path) -> None:
    size = 256 * 1024
    old, new = os.urandom(size), os.urandom(size)
    served = IgnoresIfRange(old, cuts={0: size // 2}, last_modified=None)

    def new_version(number: int) -> None:
        if number == 1:
            served.data, served.etag = new, '"v2"'

    served.before = new_version
    url = served.mount(origin, "/v")
    target = tmp_path / "v.bin"
    call(mode, HTTPConnection(retry=FAST, cache=False), "download_file", url, target,
         connections=1)
    assert target.read_bytes() == new  # not old[:half] + new[half:]
    assert origin.seen("/v")[1].headers["Range"] == f"bytes={size // 2}-"
    assert leftovers(tmp_path) == ["v.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_f11_stall_mid_body_resumes_from_what_arrived(mode: str, origin: Origin,
                                                      tmp_path: Path) -> None:
    size = 512 * 1024 + 9
    data = os.urandom(size)
    url = RangeFile(data, stalls={0: size // 2}, stall_seconds=5).mount(origin, "/s")
    conn = HTTPConnection(retry=FAST, cache=False, idle_timeout=0.3)
    target = tmp_path / "s.bin"
    call(mode, conn, "download_file", url, target, connections=1, timeout=4)
    assert target.read_bytes() == data
    ranges = [seen.headers.get("Range") for seen in origin.seen("/s")]
    assert len(ranges) == 2 and ranges[1] == f"bytes={size // 2}-"
    assert leftovers(tmp_path) == ["s.bin"]


# --- D8: an index that cannot be used at all --------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_d8_unusable_index_never_breaks_a_fetch(mode: str, origin: Origin, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "index").write_bytes(b"a file where the index directory should be")
    url = serve_resource(origin, "/d8", Resource(BODY, cache_control="max-age=600"))
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        store = FetchCache(directory)
        conn = HTTPConnection(cache=store, retry=RetryPolicy.none())
        assert call(mode, conn, "get_bytes", url) == BODY
        store.flush()
        assert get(mode, conn, "download_file", url, tmp_path / "d8.bin") == BODY
        assert call(mode, conn, "get_bytes", url) == BODY
        store.flush()
        assert not store._pending  # nothing piles up in memory either
        store.close()
    assert any("left as it is" in r.getMessage() for r in caplog.records)
    assert origin.count("/d8") == 3  # nothing could be stored: each went to the network


# --- F17 x resume: an origin that content-codes despite Accept-Encoding: identity -----------------

PLAIN = os.urandom(5 * 1024 * 1024)
CODED = gzip.compress(PLAIN, compresslevel=1)


def coded_origin() -> Callable[[socket.socket, bytes], None]:
    """gzip whatever is asked; honours Range on the *coded* bytes (as gzip_static does); the
    first whole-body answer breaks at 60%."""
    whole: list[int] = []

    def handler(sock: socket.socket, head: bytes) -> None:
        common = b'ETag: "g1"\r\nAccept-Ranges: bytes\r\nContent-Encoding: gzip\r\n'
        asked = re.search(rb"(?i)range: bytes=(\d+)-", head)
        if asked:
            start = int(asked[1])
            sock.sendall(b"HTTP/1.1 206 Partial Content\r\n" + common
                         + b"Content-Range: bytes %d-%d/%d\r\n" % (start, len(CODED) - 1,
                                                                    len(CODED))
                         + b"Content-Length: %d\r\n\r\n" % (len(CODED) - start) + CODED[start:])
            return
        whole.append(1)
        body = CODED[: len(CODED) * 3 // 5] if len(whole) == 1 else CODED
        sock.sendall(b"HTTP/1.1 200 OK\r\n" + common
                     + b"Content-Length: %d\r\n\r\n" % len(CODED) + body)

    return handler


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("connections", [1, 4])
def test_a_content_coded_body_is_restarted_never_resumed_or_split(
    mode: str, connections: int, tmp_path: Path
) -> None:
    """Range offsets of a coded body count coded bytes; the partial holds decoded ones."""
    server = RawServer(coded_origin())
    try:
        target = tmp_path / "g.bin"
        call(mode, HTTPConnection(retry=FAST, cache=False), "download_file", server.url("/g"),
             target, connections=connections)
        assert sha256(target.read_bytes()) == sha256(PLAIN)
        sent_ranges = [re.findall(rb"(?i)range: bytes=(\d+)", head) for head in server.heads]
        assert all(r in ([], [b"0"]) for r in sent_ranges), sent_ranges  # never resumed
        assert leftovers(tmp_path) == ["g.bin"]
    finally:
        server.close()


# --- S7 on disk: the sidecar of a kept partial ---------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_kept_partial_records_no_signed_query_and_still_resumes(mode: str, origin: Origin,
                                                                   tmp_path: Path) -> None:
    size = 256 * 1024 + 1
    data = os.urandom(size)
    RangeFile(data, cuts={0: size // 2}).mount(origin, "/signed.bin")
    url = origin.url("/signed.bin?X-Amz-Signature=SIGSECRET")
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none())
    target = tmp_path / "signed.bin"
    with pytest.raises(TruncatedBodyError):
        call(mode, conn, "download_file", url, target)
    sidecars = [p for p in tmp_path.iterdir() if p.name.endswith(".json")]
    assert len(sidecars) == 1 and b"SIGSECRET" not in sidecars[0].read_bytes()
    call(mode, conn, "download_file", url, target)
    assert target.read_bytes() == data
    assert origin.seen("/signed.bin")[1].headers["Range"] == f"bytes={size // 2}-"


# --- S4: https -> http on the same host and port ----------------------------------------------


@pytest.fixture
def downgrade(ca: trustme.CA) -> Iterator[tuple[int, list[bytes]]]:  # noqa: F811
    """One port speaking TLS (a 302 to plain http on the same host and port) and plain HTTP
    (records the request head): the downgrade is the only difference between the origins."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("models.test").configure_cert(context)
    plain_heads: list[bytes] = []
    port = 0

    def handler(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n"
                     b"Location: http://models.test:%d/final\r\n\r\n" % port)

    server = RawServer(handler, tls=context)

    def serve(conn: socket.socket) -> None:  # TLS or not, by the first byte the client sends
        conn.settimeout(5)
        try:
            if conn.recv(1, socket.MSG_PEEK) == b"\x16":
                conn = context.wrap_socket(conn, server_side=True)
                handler(conn, read_head(conn))
            else:
                plain_heads.append(read_head(conn))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
        except OSError:
            pass
        finally:
            conn.close()

    server._serve = serve  # type: ignore[method-assign]
    port = server.port
    yield port, plain_heads
    server.close()


@pytest.mark.parametrize("mode", MODES)
def test_s4_https_to_http_on_the_same_host_and_port_drops_credentials(
    mode: str, downgrade: tuple[int, list[bytes]],
    trusting: Callable[..., HTTPConnection],  # noqa: F811
) -> None:
    port, plain_heads = downgrade
    secrets = {"Authorization": "Bearer S3CRET", "Cookie": "sid=S3CRET",
               "X-Api-Key": "S3CRET", "Proxy-Authorization": "Basic S3CRET"}
    conn = trusting(cache=False)
    assert call(mode, conn, "get_bytes", f"https://models.test:{port}/start",
                extra_headers=secrets) == b"plain"
    assert len(plain_heads) == 1 and b"S3CRET" not in plain_heads[0]
