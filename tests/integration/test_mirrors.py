"""Mirrors against real origins on loopback: a mirror on 127.0.0.3 standing in for an origin on
127.0.0.2; the origin URL stays the identity (cache key, policy), the mirror gets the bytes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.helpers import call, leftovers
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import BlockedURLError, HTTPConnection, HTTPStatusError, RetryPolicy

DATA = os.urandom(300_000)
BIG = os.urandom(17 * 1024 * 1024)  # two 8 MiB parts or more for connections > 1
FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.02)


@pytest.fixture
def upstream() -> Iterator[Origin]:
    server = Origin(host="127.0.0.2").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mirror() -> Iterator[Origin]:
    server = Origin(host="127.0.0.3").start()
    try:
        yield server
    finally:
        server.stop()


def connect(upstream: Origin, mirror: Origin, tmp_path: Path, **kw: object) -> HTTPConnection:
    kw.setdefault("cache", tmp_path / "cache")
    return HTTPConnection(retry=FAST, mirrors={upstream.url("/"): mirror.url("/hf/")},
                          **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_bytes_come_from_the_mirror_and_are_cached_under_the_origin_url(
    mode: str, upstream: Origin, mirror: Origin, tmp_path: Path
) -> None:
    url = upstream.serve_bytes("/img.png", b"origin")
    mirror.serve_bytes("/hf/img.png", DATA, headers={"Cache-Control": "max-age=600"})
    conn = connect(upstream, mirror, tmp_path)
    first = call(mode, conn, "fetch_bytes", url + "?v=1")
    assert (first.content, first.source, first.url) == (DATA, "mirror", url + "?v=1")
    assert mirror.count("/hf/img.png") == 1 and upstream.count("/img.png") == 0
    assert mirror.seen("/hf/img.png")[0].raw_path == "/hf/img.png?v=1"
    again = call(mode, conn, "fetch_bytes", url + "?v=1")
    assert (again.content, again.source) == (DATA, "cache")
    # the key is the origin URL: a replay with no mirror at all, offline, still hits
    mirror.stop()
    offline = HTTPConnection(cache=tmp_path / "cache", offline=True, mirrors={})
    assert call(mode, offline, "get_bytes", url + "?v=1") == DATA


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("connections", [1, 4])
def test_a_download_comes_from_the_mirror(
    mode: str, connections: int, upstream: Origin, mirror: Origin, tmp_path: Path
) -> None:
    data = DATA if connections == 1 else BIG
    url = upstream.serve_bytes("/w.bin", b"never")
    RangeFile(data).mount(mirror, "/hf/w.bin")
    conn = connect(upstream, mirror, tmp_path)
    result = call(mode, conn, "fetch_file", url, tmp_path / "out" / "w.bin",
                  connections=connections, expected_sha256=sha256(data))
    assert (result.source, result.url, result.sha256) == ("mirror", url, sha256(data))
    assert sha256((tmp_path / "out" / "w.bin").read_bytes()) == sha256(data)
    assert upstream.count("/w.bin") == 0
    ranged = [s.headers.get("Range") for s in mirror.seen("/hf/w.bin")]
    assert len(ranged) >= min(connections, 2) and (connections == 1 or None not in ranged[1:])
    again = call(mode, conn, "fetch_file", url, tmp_path / "again.bin")
    assert again.source == "cache"


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("status", [404, 503])
def test_a_failing_mirror_falls_back_to_the_origin_logged_once(
    mode: str, status: int, upstream: Origin, mirror: Origin, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = upstream.serve_bytes("/a", DATA)
    mirror.serve_bytes("/hf/a", b"broken", status=status)
    target = upstream.serve_bytes("/f.bin", DATA)
    mirror.serve_bytes("/hf/f.bin", b"broken", status=status)
    conn = connect(upstream, mirror, tmp_path, cache=False)
    with caplog.at_level(logging.INFO, logger="vllm_fetch.mirrors"):
        body = call(mode, conn, "fetch_bytes", url)
        result = call(mode, conn, "fetch_file", target, tmp_path / "f.bin")
    assert (body.content, body.source) == (DATA, "origin")
    assert (result.source, sha256((tmp_path / "f.bin").read_bytes())) == ("origin",
                                                                          sha256(DATA))
    assert mirror.count("/hf/a") == 1, "a failing mirror gets one attempt, not the retries"
    assert upstream.count("/a") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to the origin" in warnings[0].getMessage()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stopped_mirror_falls_back_to_the_origin(
    mode: str, upstream: Origin, mirror: Origin, tmp_path: Path
) -> None:
    url = upstream.serve_bytes("/f.bin", DATA)
    conn = connect(upstream, mirror, tmp_path)
    mirror.stop()
    result = call(mode, conn, "fetch_file", url, tmp_path / "f.bin")
    assert result.source == "origin" and upstream.count("/f.bin") == 1
    assert sha256((tmp_path / "f.bin").read_bytes()) == sha256(DATA)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_mirror_serving_a_flipped_byte_is_caught_and_the_origin_serves(
    mode: str, upstream: Origin, mirror: Origin, tmp_path: Path
) -> None:
    bad = bytearray(DATA)
    bad[1234] ^= 1
    url = upstream.serve_bytes("/f.bin", DATA)
    mirror.serve_bytes("/hf/f.bin", bytes(bad))
    conn = connect(upstream, mirror, tmp_path)
    result = call(mode, conn, "fetch_file", url, tmp_path / "f.bin",
                  expected_sha256=sha256(DATA))
    assert result.source == "origin" and mirror.count("/hf/f.bin") == 1
    assert sha256((tmp_path / "f.bin").read_bytes()) == sha256(DATA)
    assert leftovers(tmp_path) == ["cache", "f.bin"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fallback_off_makes_the_mirror_error_the_calls(
    mode: str, upstream: Origin, mirror: Origin, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_FETCH_MIRROR_FALLBACK", "0")
    url = upstream.serve_bytes("/a", DATA)
    mirror.serve_bytes("/hf/a", b"down", status=503)
    conn = connect(upstream, mirror, tmp_path)
    with pytest.raises(HTTPStatusError) as err:
        call(mode, conn, "get_bytes", url)
    assert err.value.status == 503
    assert upstream.count("/a") == 0 and mirror.count("/hf/a") == FAST.max_attempts


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_credentials_reach_a_mirror_only_when_the_operator_says_so(
    mode: str, upstream: Origin, mirror: Origin, tmp_path: Path
) -> None:
    url = upstream.serve_bytes("/a", b"origin")
    mirror.serve_bytes("/hf/a", DATA)
    secret = {"Authorization": "Bearer s3cret", "X-Api-Key": "k"}
    call(mode, connect(upstream, mirror, tmp_path, cache=False), "get_bytes", url,
         extra_headers=secret)
    trusted = connect(upstream, mirror, tmp_path, cache=False, mirror_credentials=True)
    call(mode, trusted, "get_bytes", url, extra_headers=secret)
    plain, with_credentials = mirror.seen("/hf/a")
    assert "Authorization" not in plain.headers and "X-Api-Key" not in plain.headers
    assert with_credentials.headers["Authorization"] == "Bearer s3cret"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_mirror_host_is_trusted_but_the_policy_holds_for_everything_else(
    mode: str, upstream: Origin, mirror: Origin, tmp_path: Path
) -> None:
    """block_private_ips: the origin needs allowed_networks, the configured mirror does not; a
    URL naming the mirror directly and a redirect from the mirror are checked as always."""
    url = upstream.serve_bytes("/a", b"origin")
    mirror.serve_bytes("/hf/a", DATA)
    other = Origin(host="127.0.0.4").start()
    try:
        leak = other.serve_bytes("/secret", b"internal")

        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(leak)

        mirror.route("/hf/moved", redirect)
        conn = connect(upstream, mirror, tmp_path, cache=False, block_private_ips=True,
                       allowed_networks=["127.0.0.2/32"])
        assert call(mode, conn, "get_bytes", url) == DATA
        with pytest.raises(BlockedURLError):
            call(mode, conn, "get_bytes", mirror.url("/hf/a"))
        with pytest.raises(BlockedURLError):
            call(mode, conn, "get_bytes", upstream.url("/moved"))
        assert other.requests == [] and mirror.count("/hf/a") == 1
    finally:
        other.stop()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_revalidation_through_the_mirror_keeps_the_304(
    mode: str, upstream: Origin, mirror: Origin, tmp_path: Path
) -> None:
    async def image(request: web.Request) -> web.StreamResponse:
        headers = {"ETag": '"v1"', "Cache-Control": "max-age=0"}
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers=headers)
        return web.Response(body=DATA, headers=headers)

    url = upstream.serve_bytes("/i.png", b"origin")
    mirror.route("/hf/i.png", image)
    conn = connect(upstream, mirror, tmp_path)
    for _ in range(3):
        assert call(mode, conn, "get_bytes", url) == DATA
    assert [s.headers.get("If-None-Match") for s in mirror.seen("/hf/i.png")] == [
        None, '"v1"', '"v1"']


def test_mirrors_from_the_environment(upstream: Origin, mirror: Origin, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_FETCH_MIRRORS", f"https://nowhere.invalid=http://x.invalid,"
                                             f"{upstream.url('')}={mirror.url('/hf')}")
    url = upstream.serve_bytes("/a", b"origin")
    mirror.serve_bytes("/hf/a", DATA)
    conn = HTTPConnection(cache=False)
    assert conn.fetch_bytes(url).source == "mirror"
    assert asyncio.run(conn.async_fetch_bytes(url)).source == "mirror"
    assert HTTPConnection(cache=False, mirrors={}).fetch_bytes(url).content == b"origin"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_mirror_cut_mid_body_resumes_from_the_origin(
    mode: str, upstream: Origin, mirror: Origin, tmp_path: Path
) -> None:
    """The partial belongs to the origin URL: the origin continues what the mirror sent."""
    RangeFile(DATA, cuts={0: 120_000}).mount(mirror, "/hf/r.bin")
    origin_file = RangeFile(DATA)
    url = origin_file.mount(upstream, "/r.bin")
    conn = connect(upstream, mirror, tmp_path, cache=False)
    result = call(mode, conn, "fetch_file", url, tmp_path / "r.bin", expected_sha256=sha256(DATA))
    assert result.source == "origin" and result.url == url
    assert sha256((tmp_path / "r.bin").read_bytes()) == sha256(DATA)
    (seen,) = upstream.seen("/r.bin")
    ranged = seen.headers.get("Range", "")
    assert ranged.startswith("bytes=") and ranged != "bytes=0-"
    assert seen.headers.get("If-Range") == '"v1"'
    assert upstream.bytes_sent < len(DATA)
    assert leftovers(tmp_path) == ["r.bin"]
