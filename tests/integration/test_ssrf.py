"""SSRF guard on loopback (S1, S2, S3, S5, F18, F19), sync and async.

Refused forms must leave a counting listener with **zero** accepted connections. Redirects come
from an origin on 127.0.0.2, which the tests exempt with ``allowed_networks`` so the guard can
stay on while that origin is reached; every refused target points at 127.0.0.1 (or ::1).
Names come from a stub resolver; anything that would dial off loopback fails the test.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from tests.helpers import call
from tests.netsafety import CountingListener, StubResolver, off_loopback  # noqa: F401
from tests.origin import Origin
from vllm_fetch import (
    BlockedURLError,
    FetchConnectionError,
    FetchError,
    HTTPConnection,
    InvalidURLError,
    RetryPolicy,
    TooManyRedirectsError,
)

MODES = ["sync", "async"]
EXEMPT = ["127.0.0.2/32"]


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    server = CountingListener("127.0.0.1")
    yield server
    server.close()


@pytest.fixture
def listener6(listener: CountingListener) -> Iterator[CountingListener | None]:
    """The same port on ::1, when this machine has IPv6 loopback."""
    try:
        server = CountingListener("::1", listener.port)
    except OSError:
        yield None
        return
    yield server
    server.close()


@pytest.fixture
def origin2() -> Iterator[Origin]:
    """An origin on 127.0.0.2: exempt from the guard in these tests (allowed_networks)."""
    server = Origin(host="127.0.0.2").start()
    yield server
    server.stop()


def guarded(**kwargs: object) -> HTTPConnection:
    return HTTPConnection(retry=RetryPolicy.none(), block_private_ips=True, **kwargs)  # type: ignore[arg-type]


def forms(port: int) -> list[str]:
    """URLs that all lead to the loopback listener on ``port``."""
    hosts = ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0x7f000001",
             "0177.0.0.1", "127.1", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]",
             "\uff11\uff12\uff17.\uff10.\uff10.\uff11", "LocalHost.", "[::ffff:0:127.0.0.1]",
             "[::ffff:0:7f00:1]", "[64:ff9b:1:7f:0:1::]", "[2a00:1450::5efe:7f00:1]",
             "[2a00:1450::200:5efe:127.0.0.1]"]
    return [f"http://{host}:{port}/x?sig=secret" for host in hosts]


FORM_IDS = ["v4", "localhost", "v6", "mapped", "decimal", "hex", "octal", "short", "compat",
            "nat64", "6to4", "fullwidth", "localhost-dot", "translated", "translated-hex",
            "local-nat64", "isatap", "isatap-u"]


def test_control_the_listener_counts(listener: CountingListener) -> None:
    """Without the guard the same URL does reach the listener: the zero below means something."""
    with pytest.raises(FetchConnectionError):
        HTTPConnection(retry=RetryPolicy.none()).get_bytes(f"http://127.0.0.1:{listener.port}/")
    assert listener.accepted == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index", range(len(FORM_IDS)), ids=FORM_IDS)
def test_s1_direct_forms_never_connect(mode: str, index: int, listener: CountingListener,
                                       listener6: CountingListener | None) -> None:
    url = forms(listener.port)[index]
    with pytest.raises(BlockedURLError) as info:
        call(mode, guarded(), "get_bytes", url)
    assert isinstance(info.value, ValueError) and "secret" not in str(info.value)
    assert listener.accepted == 0
    assert listener6 is None or listener6.accepted == 0


@pytest.mark.usefixtures("off_loopback")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("host", ["169.254.169.254", "100.64.0.1", "[fd00:ec2::254]", "10.0.0.1",
                                  "[fe80::1%25eth0]", "192.168.0.1", "0.0.0.0"])
def test_s1_off_loopback_forms_never_dial(mode: str, host: str) -> None:
    with pytest.raises(BlockedURLError):
        call(mode, guarded(), "get_bytes", f"http://{host}/latest/meta-data/")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index", range(len(FORM_IDS)), ids=FORM_IDS)
def test_s1_redirect_to_each_form_never_connects(
    mode: str, index: int, listener: CountingListener, listener6: CountingListener | None,
    origin2: Origin,
) -> None:
    start = origin2.serve_bytes("/go", b"", status=302,
                                headers={"Location": forms(listener.port)[index]})
    conn = guarded(allowed_networks=EXEMPT)
    # BlockedURLError, or its parent InvalidURLError for the fullwidth host: a raw non-ASCII
    # Location header reaches the client as Latin-1 mojibake, which is no valid host at all
    with pytest.raises(InvalidURLError):
        call(mode, conn, "get_bytes", start)
    assert origin2.count("/go") == 1
    assert listener.accepted == 0
    assert listener6 is None or listener6.accepted == 0


@pytest.mark.parametrize("mode", MODES)
def test_s1_redirect_via_a_resolved_name_never_connects(
    mode: str, listener: CountingListener, origin2: Origin
) -> None:
    """public.test is fine; its redirect to a name resolving to loopback is refused."""
    resolver = StubResolver({"public.test": ["127.0.0.2"], "internal.test": ["127.0.0.1"]})
    origin2.serve_bytes("/go", b"", status=307,
                        headers={"Location": f"http://internal.test:{listener.port}/admin"})
    origin2.serve_bytes("/ok", b"fine")
    conn = guarded(allowed_networks=EXEMPT, resolver=resolver)
    assert call(mode, conn, "get_bytes", f"http://public.test:{origin2.port}/ok") == b"fine"
    with pytest.raises(BlockedURLError):
        call(mode, conn, "get_bytes", f"http://public.test:{origin2.port}/go")
    assert resolver.lookups("internal.test") == 1
    assert listener.accepted == 0


@pytest.mark.parametrize("mode", MODES)
def test_s2_mixed_answers_fail_closed(mode: str, listener: CountingListener,
                                      origin2: Origin) -> None:
    origin2.serve_bytes("/x", b"nope")
    resolver = StubResolver({"mixed.test": ["127.0.0.2", "127.0.0.1"]})
    with pytest.raises(BlockedURLError):
        call(mode, guarded(allowed_networks=EXEMPT, resolver=resolver), "get_bytes",
             f"http://mixed.test:{origin2.port}/x")
    assert origin2.requests == [] and listener.accepted == 0


@pytest.fixture
def twin(origin2: Origin) -> Iterator[CountingListener]:
    """A counting listener on 127.0.0.1 at the *same port* as origin2 (127.0.0.2)."""
    server = CountingListener("127.0.0.1", origin2.port)
    yield server
    server.close()


@pytest.mark.parametrize("mode", MODES)
def test_s3_resolve_once_and_dial_the_checked_address(
    mode: str, origin2: Origin, twin: CountingListener
) -> None:
    """The first answer is checked and dialed; a rebinding second answer is never used."""
    resolver = StubResolver({"swap.test": lambda nth: ["127.0.0.2"] if nth == 1 else ["127.0.0.1"]})
    origin2.serve_bytes("/w", b"weights")
    url = f"http://swap.test:{origin2.port}/w"
    conn = HTTPConnection(retry=RetryPolicy.none(), block_private_ips=True,
                          allowed_networks=EXEMPT, resolver=resolver, reuse_client=False)
    assert call(mode, conn, "get_bytes", url) == b"weights"
    assert resolver.lookups("swap.test") == 1
    assert origin2.seen("/w")[0].headers["Host"] == f"swap.test:{origin2.port}"
    assert twin.accepted == 0
    # a new connection looks up again: the rebound answer is checked, and refused
    with pytest.raises(BlockedURLError):
        call(mode, conn, "get_bytes", url)
    assert twin.accepted == 0 and origin2.count("/w") == 1


@pytest.mark.parametrize("mode", MODES)
def test_resolver_hook_pins_without_the_guard(mode: str, origin: Origin) -> None:
    """A resolver alone pins too: the name stays in Host, the target stays verbatim."""
    raw = "/bucket/key?X-Amz-Signature=ab%2Bcd%3D%3D&x=%7e"
    origin.serve_bytes("/bucket/key", b"ok")
    resolver = StubResolver({"models.test": ["127.0.0.1"]})
    conn = HTTPConnection(retry=RetryPolicy.none(), resolver=resolver)
    assert call(mode, conn, "get_bytes", f"http://models.test:{origin.port}{raw}") == b"ok"
    seen = origin.seen("/bucket/key")[0]
    assert seen.raw_path == raw and seen.headers["Host"] == f"models.test:{origin.port}"
    assert resolver.lookups("models.test") == 1


@pytest.mark.parametrize("mode", MODES)
def test_unknown_name_is_a_connection_error(mode: str) -> None:
    conn = guarded(resolver=StubResolver({}))
    with pytest.raises(FetchConnectionError):
        call(mode, conn, "get_bytes", "http://nowhere.test/")


@pytest.fixture
def bouncer(origin2: Origin, listener: CountingListener) -> str:
    """A URL on the exempt origin that redirects to the loopback listener."""
    return origin2.serve_bytes("/bounce", b"", status=302,
                               headers={"Location": f"http://127.0.0.1:{listener.port}/"})


def test_raw_sync_session_is_guarded(listener: CountingListener, bouncer: str) -> None:
    session = guarded(allowed_networks=EXEMPT).get_sync_client()
    for url in (f"http://127.0.0.1:{listener.port}/", f"http://2130706433:{listener.port}/",
                f"http://localhost:{listener.port}/", bouncer):
        with pytest.raises(BlockedURLError):
            session.get(url)  # requests follows the redirect itself here: still checked
    domains = HTTPConnection(allowed_domains=["127.0.0.2"]).get_sync_client()
    with pytest.raises(BlockedURLError):
        domains.get(bouncer)
    assert listener.accepted == 0


def test_raw_async_session_is_guarded(listener: CountingListener, bouncer: str) -> None:
    async def main() -> None:
        async with guarded(allowed_networks=EXEMPT) as conn:
            session = await conn.get_async_client()
            for url in (f"http://127.0.0.1:{listener.port}/",
                        f"http://[::ffff:7f00:1]:{listener.port}/",
                        f"http://localhost:{listener.port}/", bouncer):
                with pytest.raises(BlockedURLError):
                    await session.get(url)  # aiohttp follows the redirect itself here
        async with HTTPConnection(allowed_domains=["127.0.0.2"]) as conn:
            with pytest.raises(BlockedURLError):
                await (await conn.get_async_client()).get(bouncer)

    asyncio.run(main())
    assert listener.accepted == 0


def test_env_switch(monkeypatch: pytest.MonkeyPatch, listener: CountingListener) -> None:
    monkeypatch.setenv("VLLM_FETCH_BLOCK_PRIVATE_IPS", "1")
    with pytest.raises(BlockedURLError):
        HTTPConnection().get_bytes(f"http://127.0.0.1:{listener.port}/")
    assert listener.accepted == 0
    explicit = HTTPConnection(block_private_ips=False, retry=RetryPolicy.none())
    with pytest.raises(FetchConnectionError):
        explicit.get_bytes(f"http://127.0.0.1:{listener.port}/")
    assert listener.accepted == 1


@pytest.mark.parametrize("mode", MODES)
def test_s6_the_checked_host_is_the_resolved_host(mode: str, listener: CountingListener) -> None:
    """``127.0.0.1%2f@x``: the client dials x (the rest is userinfo), so x is what is checked."""
    resolver = StubResolver({"x": ["127.0.0.1"], "good.test": ["127.0.0.1"]})
    conn = guarded(resolver=resolver)
    with pytest.raises(BlockedURLError):
        call(mode, conn, "get_bytes", f"http://127.0.0.1%2f@x:{listener.port}/")
    assert resolver.calls == [("x", listener.port)]
    for url in (f"http://evil.test\\@good.test:{listener.port}/",
                f"http://good.test%00.evil:{listener.port}/",
                f"http://good.test\t:{listener.port}/"):
        with pytest.raises(InvalidURLError):
            call(mode, conn, "get_bytes", url)
    assert len(resolver.calls) == 1 and listener.accepted == 0


# -- allowed_domains and redirects -------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_s5_redirect_leaving_allowed_domains_refused(mode: str, origin: Origin,
                                                     listener: CountingListener) -> None:
    resolver = StubResolver({"good.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"]})
    conn = HTTPConnection(retry=RetryPolicy.none(), allowed_domains=["good.test"],
                          resolver=resolver)
    origin.serve_bytes("/ok", b"ok")
    origin.serve_bytes("/out", b"", status=302,
                       headers={"Location": f"http://evil.test:{listener.port}/"})
    origin.serve_bytes("/raw", b"", status=302,
                       headers={"Location": f"http://127.0.0.1:{listener.port}/"})
    assert call(mode, conn, "get_bytes", f"http://GOOD.test.:{origin.port}/ok") == b"ok"
    for path in ("/out", "/raw"):
        with pytest.raises(BlockedURLError):
            call(mode, conn, "get_bytes", f"http://good.test:{origin.port}{path}")
    with pytest.raises(BlockedURLError):
        call(mode, conn, "get_bytes", f"http://sub.good.test:{origin.port}/ok")
    assert resolver.lookups("evil.test") == 0 and listener.accepted == 0


@pytest.mark.parametrize("mode", MODES)
def test_f18_redirect_loop_stops_at_the_cap(mode: str, origin: Origin) -> None:
    url = origin.serve_bytes("/loop", b"", status=302, headers={"Location": "/loop"})
    conn = HTTPConnection(retry=RetryPolicy(max_attempts=3, backoff_base=0), max_redirects=3)
    with pytest.raises(TooManyRedirectsError):
        call(mode, conn, "get_bytes", url)
    assert origin.count("/loop") == 4  # the first request and 3 redirects, never retried


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x",
                                      "gopher://127.0.0.1:70/_x", "data:text/plain,hello"])
def test_f19_redirect_to_other_schemes_refused(mode: str, location: str, origin: Origin) -> None:
    url = origin.serve_bytes("/s", b"", status=301, headers={"Location": location})
    with pytest.raises(InvalidURLError) as info:
        call(mode, HTTPConnection(retry=RetryPolicy.none()), "get_bytes", url)
    assert isinstance(info.value, ValueError)
    assert len(origin.requests) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize("location", ["http://[::1/x?sig=secret", "//[::1/x", "http://[zz]/x",
                                      "http://]/x", "http://[/x"])
def test_f19_unparseable_redirect_is_an_invalid_url(mode: str, cached: bool, location: str,
                                                    origin: Origin) -> None:
    """A Location urllib cannot parse (an unclosed bracket, a bracketed host that is no IPv6
    address) is a refused hop like any other: InvalidURLError, so a FetchError and a
    ValueError, never the bare ValueError of urljoin, and nothing else is dialed."""
    url = origin.serve_bytes("/s", b"", status=302, headers={"Location": location})
    conn = HTTPConnection(retry=RetryPolicy.none(), cache=None if cached else False)
    with pytest.raises(InvalidURLError) as info:
        call(mode, conn, "get_bytes", url + "?sig=secret")
    assert isinstance(info.value, FetchError) and isinstance(info.value, ValueError)
    assert "secret" not in str(info.value)
    assert len(origin.requests) == 1


@pytest.mark.parametrize("mode", MODES)
def test_netsafety_refuses_off_loopback(mode: str) -> None:
    """The safety net itself: a dial off loopback fails before any packet leaves, sync or async."""
    from tests.netsafety import OffLoopbackDial, loopback_only

    with loopback_only() as attempts:
        with pytest.raises(OffLoopbackDial):
            socket.create_connection(("192.0.2.1", 9), timeout=0.1)
        with pytest.raises(FetchConnectionError):
            call(mode, HTTPConnection(retry=RetryPolicy.none()), "get_bytes", "http://192.0.2.1:9/")
    assert attempts == [("192.0.2.1", 9), ("192.0.2.1", 9)]
