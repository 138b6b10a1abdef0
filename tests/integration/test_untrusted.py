"""Fetching untrusted URLs on loopback: credentials across redirects (S4), cookies, redirect
bodies, Content-Disposition (S9), proxies and the guard, redaction in errors and logs (S7)."""

from __future__ import annotations

import base64
import logging
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import call, leftovers
from tests.netsafety import StubResolver
from tests.origin import Origin
from tests.rawserver import RawServer
from vllm_fetch import BlockedURLError, FetchError, HTTPConnection, RetryPolicy

MODES = ["sync", "async"]
CREDENTIALS = {"Authorization": "Bearer tok-S3CRET", "Cookie": "sid=S3CRET",
               "Proxy-Authorization": "Basic S3CRET", "X-Api-Key": "S3CRET",
               "X-Tenant": "S3CRET"}


@pytest.fixture
def other() -> Iterator[Origin]:
    """A second origin: same address, another port, so another origin."""
    server = Origin().start()
    yield server
    server.stop()


@pytest.fixture
def conn() -> HTTPConnection:
    return HTTPConnection(retry=RetryPolicy.none())


@pytest.mark.parametrize("mode", MODES)
def test_s4_cross_origin_redirect_drops_credentials(mode: str, origin: Origin, other: Origin,
                                                    conn: HTTPConnection) -> None:
    other.serve_bytes("/final", b"done")
    start = origin.serve_bytes("/go", b"", status=302,
                               headers={"Location": other.url("/final")})
    assert call(mode, conn, "get_bytes", start, extra_headers=CREDENTIALS) == b"done"
    first, second = origin.seen("/go")[0].headers, other.seen("/final")[0].headers
    assert all(first.get(name) == value for name, value in CREDENTIALS.items())
    assert not {n.lower() for n in second} & {n.lower() for n in CREDENTIALS}
    assert "vllm_fetch/" in second["User-Agent"]


@pytest.mark.parametrize("mode", MODES)
def test_s4_userinfo_does_not_follow_to_another_origin(mode: str, origin: Origin, other: Origin,
                                                       conn: HTTPConnection) -> None:
    other.serve_bytes("/final", b"done")
    origin.serve_bytes("/go", b"", status=307, headers={"Location": other.url("/final")})
    url = f"http://user:pw@127.0.0.1:{origin.port}/go"
    assert call(mode, conn, "get_bytes", url) == b"done"
    assert origin.seen("/go")[0].headers["Authorization"].startswith("Basic ")
    assert "Authorization" not in other.seen("/final")[0].headers


@pytest.mark.parametrize("mode", MODES)
def test_s4_same_origin_redirect_keeps_headers(mode: str, origin: Origin,
                                               conn: HTTPConnection) -> None:
    origin.serve_bytes("/final", b"done")
    start = origin.serve_bytes("/go", b"", status=301, headers={"Location": "/final"})
    assert call(mode, conn, "get_bytes", start, extra_headers=CREDENTIALS) == b"done"
    seen = origin.seen("/final")[0].headers
    assert all(seen.get(name) == value for name, value in CREDENTIALS.items())


@pytest.mark.parametrize("mode", MODES)
def test_no_cookie_jar_shared_between_callers(mode: str, origin: Origin,
                                              conn: HTTPConnection) -> None:
    setter = origin.serve_bytes("/login", b"", status=302,
                                headers={"Set-Cookie": "sid=victim; Path=/", "Location": "/a"})
    origin.serve_bytes("/a", b"a")
    echo = origin.serve_bytes("/echo", b"e")
    call(mode, conn, "get_bytes", setter)
    call(mode, conn, "get_bytes", echo)
    assert all("Cookie" not in seen.headers for seen in origin.requests)


@pytest.mark.parametrize("mode", MODES)
def test_redirect_body_is_never_read(mode: str, conn: HTTPConnection) -> None:
    def handler(sock: socket.socket, head: bytes) -> None:
        if head.startswith(b"GET /final"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        sock.sendall(b"HTTP/1.1 302 Found\r\nLocation: /final\r\n"
                     b"Content-Length: 10000000000\r\n\r\n")
        while server.bytes_sent < 256 << 20:
            sock.sendall(bytes(65536))
            server.sent(65536)

    server = RawServer(handler)
    try:
        assert call(mode, conn, "get_bytes", server.url("/redirect")) == b"ok"
    finally:
        server.close()
    assert server.bytes_sent < 64 << 20


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("disposition", [
    'attachment; filename="../../escape.bin"', "attachment; filename=/tmp/escape.bin",
    "attachment; filename*=UTF-8''..%2F..%2Fescape.bin",
])
def test_s9_content_disposition_is_never_a_path(mode: str, disposition: str, origin: Origin,
                                                conn: HTTPConnection, tmp_path: Path) -> None:
    url = origin.serve_bytes("/file", b"payload", headers={"Content-Disposition": disposition})
    target = tmp_path / "a" / "b" / "model.bin"
    assert call(mode, conn, "download_file", url, target) == target
    assert target.read_bytes() == b"payload"
    assert leftovers(target.parent) == ["model.bin"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "model.bin"]
    assert not Path("/tmp/escape.bin").exists()


# -- proxies ---------------------------------------------------------------------------------
@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[RawServer]:
    """An HTTP proxy on loopback that answers every request itself, set in the environment."""
    def answer(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia-proxy")

    server = RawServer(answer)
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, server.url())
    monkeypatch.delenv("VLLM_FETCH_TRUST_ENV", raising=False)
    yield server
    server.close()


@pytest.mark.parametrize("mode", MODES)
def test_environment_proxy_used_by_default(mode: str, proxy: RawServer, conn: HTTPConnection,
                                           origin: Origin) -> None:
    url = f"http://models.test:{origin.port}/w"
    assert call(mode, conn, "get_bytes", url) == b"via-proxy"
    assert proxy.heads and proxy.heads[0].startswith(f"GET {url} HTTP/1.1".encode())
    off = HTTPConnection(retry=RetryPolicy.none(), trust_env=False,
                         resolver=StubResolver({"models.test": ["127.0.0.1"]}))
    origin.serve_bytes("/w", b"direct")
    assert call(mode, off, "get_bytes", url) == b"direct"
    assert len(proxy.heads) == 1


@pytest.mark.parametrize("mode", MODES)
def test_no_proxy_honoured(mode: str, proxy: RawServer, origin: Origin,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "models.test")
    origin.serve_bytes("/w", b"direct")
    conn = HTTPConnection(retry=RetryPolicy.none(),
                          resolver=StubResolver({"models.test": ["127.0.0.1"]}))
    assert call(mode, conn, "get_bytes", f"http://models.test:{origin.port}/w") == b"direct"
    assert proxy.heads == []


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "127.0.0.1", "10.0.0.0/8,127.0.0.0/24"])
@pytest.mark.parametrize("mode", MODES)
def test_no_proxy_cidr_ranges_count_on_both_sides(mode: str, no_proxy: str, proxy: RawServer,
                                                  origin: Origin,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, no_proxy)
    origin.serve_bytes("/w", b"direct")
    conn = HTTPConnection(retry=RetryPolicy.none())
    assert call(mode, conn, "get_bytes", origin.url("/w")) == b"direct"
    assert proxy.heads == []


@pytest.mark.parametrize("mode", MODES)
def test_proxy_off_when_the_policy_restricts(mode: str, proxy: RawServer,
                                             origin: Origin) -> None:
    origin.serve_bytes("/w", b"direct")
    resolver = StubResolver({"models.test": ["127.0.0.1"]})
    url = f"http://models.test:{origin.port}/w"
    domains = HTTPConnection(retry=RetryPolicy.none(), allowed_domains=["models.test"],
                             resolver=resolver)
    assert call(mode, domains, "get_bytes", url) == b"direct"
    blocked = HTTPConnection(retry=RetryPolicy.none(), block_private_ips=True, resolver=resolver)
    with pytest.raises(BlockedURLError):
        call(mode, blocked, "get_bytes", url)
    assert proxy.heads == []
    opted_in = HTTPConnection(retry=RetryPolicy.none(), allowed_domains=["models.test"],
                              trust_env=True)
    assert call(mode, opted_in, "get_bytes", url) == b"via-proxy"
    assert len(proxy.heads) == 1


def test_env_trust_switch_counts_as_explicit(proxy: RawServer, origin: Origin,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_FETCH_TRUST_ENV", "1")
    conn = HTTPConnection(retry=RetryPolicy.none(), allowed_domains=["models.test"])
    assert conn.get_bytes(f"http://models.test:{origin.port}/w") == b"via-proxy"
    monkeypatch.setenv("VLLM_FETCH_TRUST_ENV", "0")
    plain = HTTPConnection(retry=RetryPolicy.none(),
                           resolver=StubResolver({"models.test": ["127.0.0.1"]}))
    origin.serve_bytes("/w", b"direct")
    assert plain.get_bytes(f"http://models.test:{origin.port}/w") == b"direct"


# -- S7: redaction -----------------------------------------------------------------------------
SECRETS = ("S3CRET", "SIGSECRET", "PASSWORD", "tok-")


def assert_clean(error: BaseException, records: list[logging.LogRecord]) -> None:
    texts = ["".join(traceback.format_exception(error)), repr(error), str(error),
             str(getattr(error, "url", ""))]
    texts += [record.getMessage() for record in records]
    texts += ["".join(traceback.format_exception(*r.exc_info)) for r in records if r.exc_info]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked in: {text[:500]}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["status", "refused-port", "redirect-refused", "header-limit"])
def test_s7_no_secret_in_errors_or_logs(mode: str, case: str, origin: Origin,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vllm_fetch")
    query = "?X-Amz-Signature=SIGSECRET&X-Amz-Credential=AKIA%2FS3CRET"
    origin.serve_bytes("/busy", b"", status=503, headers={"Retry-After": "0"})
    origin.serve_bytes("/hop", b"", status=302,
                       headers={"Location": f"http://127.0.0.1:1/x{query}"})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    closed_port = listener.getsockname()[1]
    listener.close()
    header_bomb = RawServer(lambda s, h: s.sendall(b"HTTP/1.1 200 OK\r\nX: " + b"S3CRET" * 20000))
    try:
        url = {
            "status": f"http://127.0.0.1:{origin.port}/busy{query}",
            "refused-port": f"http://user:PASSWORD@127.0.0.1:{closed_port}/x{query}",
            "redirect-refused": f"http://user:PASSWORD@127.0.0.1:{origin.port}/hop{query}",
            "header-limit": f"http://user:PASSWORD@127.0.0.1:{header_bomb.port}/h{query}",
        }[case]
        conn = HTTPConnection(retry=RetryPolicy(max_attempts=2, backoff_base=0),
                              allowed_domains=["127.0.0.1"] if case == "redirect-refused"
                              else None, block_private_ips=False)
        if case == "redirect-refused":
            conn = HTTPConnection(retry=RetryPolicy.none(), allowed_domains=["127.0.0.2"])
            url = url.replace("127.0.0.1", "127.0.0.2")
        # userinfo and an Authorization header together: the header is sent, and neither shows
        with pytest.raises(FetchError) as info:
            call(mode, conn, "get_bytes", url, extra_headers=CREDENTIALS)
    finally:
        header_bomb.close()
    assert_clean(info.value, caplog.records)
    if case == "status":
        assert any("retrying" in r.getMessage() for r in caplog.records)  # logs were captured


# -- the environment is remembered, never stale ------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_proxy_set_after_a_first_call_is_used(mode: str, origin: Origin,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    origin.serve_bytes("/w", b"direct")
    conn = HTTPConnection(retry=RetryPolicy.none(),
                          resolver=StubResolver({"models.test": ["127.0.0.1"]}))
    url = f"http://models.test:{origin.port}/w"
    assert call(mode, conn, "get_bytes", url, use_cache=False) == b"direct"
    server = RawServer(lambda sock, head: sock.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia-proxy"))
    try:
        monkeypatch.setenv("http_proxy", server.url())
        assert call(mode, conn, "get_bytes", url, use_cache=False) == b"via-proxy"
        monkeypatch.setenv("no_proxy", "models.test")
        assert call(mode, conn, "get_bytes", url, use_cache=False) == b"direct"
    finally:
        server.close()
    assert len(server.heads) == 1


@pytest.mark.parametrize("mode", MODES)
def test_netrc_credentials_are_sent_and_reread(mode: str, origin: Origin, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    origin.serve_bytes("/w", b"ok")
    conn = HTTPConnection(retry=RetryPolicy.none())
    url = origin.url("/w")
    assert call(mode, conn, "get_bytes", url, use_cache=False) == b"ok"
    netrc.write_text("machine 127.0.0.1 login alice password first\n")
    netrc.chmod(0o600)
    assert call(mode, conn, "get_bytes", url, use_cache=False) == b"ok"
    netrc.write_text("machine 127.0.0.1 login alice password second-one\n")
    assert call(mode, conn, "get_bytes", url, use_cache=False) == b"ok"
    seen = [r.headers.get("Authorization") for r in origin.seen("/w")]
    assert seen == [None, "Basic YWxpY2U6Zmlyc3Q=", "Basic YWxpY2U6c2Vjb25kLW9uZQ=="]
    url_credentials = f"http://bob:pw@127.0.0.1:{origin.port}/w"
    assert call(mode, conn, "get_bytes", url_credentials, use_cache=False) == b"ok"
    assert origin.seen("/w")[-1].headers["Authorization"].startswith("Basic ")


@pytest.mark.parametrize("mode", MODES)
def test_a_callers_own_authorization_wins_over_netrc(mode: str, origin: Origin, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    origin.serve_bytes("/own", b"ok")
    conn = HTTPConnection(retry=RetryPolicy.none())
    for name in ("Authorization", "authorization"):
        assert call(mode, conn, "get_bytes", origin.url("/own"), use_cache=False,
                    extra_headers={name: "Bearer mine"}) == b"ok"
    assert call(mode, conn, "get_bytes", origin.url("/own"), use_cache=False) == b"ok"
    seen = [[v for k, v in r.headers.items() if k.lower() == "authorization"]
            for r in origin.seen("/own")]
    netrc_basic = "Basic " + base64.b64encode(b"alice:from-netrc").decode()
    assert seen == [["Bearer mine"], ["Bearer mine"], [netrc_basic]]


@pytest.mark.parametrize("mode", MODES)
def test_proxy_credentials_from_the_environment(mode: str, proxy: RawServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy.url().replace("http://", "http://alice:s3cret@"))
    conn = HTTPConnection(retry=RetryPolicy.none())
    assert call(mode, conn, "get_bytes", "http://models.test:1/w", use_cache=False) == b"via-proxy"
    head = proxy.heads[0].decode("latin-1").lower()
    assert "proxy-authorization: basic ywxpy2u6cznjcmv0" in head
    assert head.count("proxy-authorization") == 1
