"""S3 over TLS: the socket goes to the pinned address, SNI and the certificate check keep the
name. A throwaway CA (trustme) signs a certificate for ``models.test``; a stub resolver maps
that name to 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.connector
import pytest
import trustme

from tests.helpers import call
from tests.netsafety import StubResolver
from tests.rawserver import RawServer
from vllm_fetch import FetchConnectionError, HTTPConnection, RetryPolicy

MODES = ["sync", "async"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    authority = trustme.CA()
    # aiohttp verifies with one module-level default context; trusting a throwaway test CA
    # there is the only way in without an ssl= option on vllm_fetch's API
    authority.configure_trust(aiohttp.connector._SSL_CONTEXT_VERIFIED)
    return authority


def tls_server(ca: trustme.CA, name: str, sni: list[str | None]) -> RawServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    context.sni_callback = lambda _sock, server_name, _ctx: sni.append(server_name)  # type: ignore[assignment,misc,return-value]

    def answer(sock: socket.socket, head: bytes) -> None:
        host = [line for line in head.split(b"\r\n") if line.lower().startswith(b"host:")]
        body = host[0].split(b":", 1)[1].strip() if host else b"?"
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    return RawServer(answer, tls=context)


@pytest.fixture
def sni() -> list[str | None]:
    return []


@pytest.fixture
def server(ca: trustme.CA, sni: list[str | None]) -> Iterator[RawServer]:
    srv = tls_server(ca, "models.test", sni)
    yield srv
    srv.close()


@pytest.fixture
def trusting(ca: trustme.CA, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Callable[..., HTTPConnection]:
    """Connections whose sync side trusts the test CA (aiohttp's is set up by ``ca``)."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    # requests lets $REQUESTS_CA_BUNDLE win over Session.verify whenever trust_env is on
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(bundle))

    def make(**kwargs: Any) -> HTTPConnection:
        return HTTPConnection(retry=RetryPolicy.none(),
                              resolver=StubResolver({"models.test": ["127.0.0.1"]}), **kwargs)

    return make


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("guard", [False, True], ids=["resolver", "block_private_ips"])
def test_s3_tls_keeps_the_name(mode: str, guard: bool, server: RawServer, sni: list[str | None],
                               trusting: Callable[..., HTTPConnection]) -> None:
    # with the guard, trust_env is off (no proxies): $REQUESTS_CA_BUNDLE must still count
    extra = {"block_private_ips": True, "allowed_networks": ["127.0.0.1/32"]} if guard else {}
    url = f"https://models.test:{server.port}/w"
    assert call(mode, trusting(**extra), "get_bytes", url) == f"models.test:{server.port}".encode()
    assert sni == ["models.test"]


@pytest.mark.parametrize("mode", MODES)
def test_certificate_is_checked_against_the_name_not_the_address(
    mode: str, ca: trustme.CA, sni: list[str | None], trusting: Callable[..., HTTPConnection]
) -> None:
    wrong = tls_server(ca, "other.test", sni)  # a valid chain for another name
    try:
        with pytest.raises(FetchConnectionError):
            call(mode, trusting(), "get_bytes", f"https://models.test:{wrong.port}/w")
    finally:
        wrong.close()
    assert sni == ["models.test"]
