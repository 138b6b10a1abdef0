"""Every CA bundle variable counts on both sides (VLLM_FETCH_CA_BUNDLE first), and a proxy
refusing CONNECT is a FetchConnectionError that says so. A throwaway CA (trustme) signs the
TLS origin's certificate for 127.0.0.1; a raw-socket proxy answers CONNECT with a refusal."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.helpers import call
from tests.rawserver import RawServer
from vllm_fetch import FetchConnectionError, HTTPConnection, RetryPolicy
from vllm_fetch.config import CA_BUNDLE_VARIABLES

MODES = ["sync", "async"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[RawServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    def answer(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")

    srv = RawServer(answer, tls=context)
    yield srv
    srv.close()


@pytest.fixture
def pems(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    good, wrong = tmp_path / "ca.pem", tmp_path / "other.pem"
    ca.cert_pem.write_to_path(str(good))
    trustme.CA().cert_pem.write_to_path(str(wrong))
    return good, wrong


@pytest.fixture(autouse=True)
def no_ca_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CA_BUNDLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def fresh() -> HTTPConnection:
    return HTTPConnection(cache=False, retry=RetryPolicy.none())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variable", CA_BUNDLE_VARIABLES)
def test_each_ca_variable_counts_on_both_sides(
    mode: str, variable: str, server: RawServer, pems: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(variable, str(pems[0]))
    assert call(mode, fresh(), "get_bytes", server.url("/x")) == b"secure"


@pytest.mark.parametrize("mode", MODES)
def test_without_the_ca_the_certificate_is_refused(mode: str, server: RawServer) -> None:
    with pytest.raises(FetchConnectionError):
        call(mode, fresh(), "get_bytes", server.url("/x"))


@pytest.mark.parametrize("mode", MODES)
def test_vllm_fetch_ca_bundle_wins(mode: str, server: RawServer, pems: tuple[Path, Path],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    good, wrong = pems
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(wrong))
    monkeypatch.setenv("SSL_CERT_FILE", str(wrong))
    monkeypatch.setenv("VLLM_FETCH_CA_BUNDLE", str(good))
    assert call(mode, fresh(), "get_bytes", server.url("/x")) == b"secure"
    monkeypatch.setenv("VLLM_FETCH_CA_BUNDLE", str(wrong))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(good))
    with pytest.raises(FetchConnectionError):
        call(mode, fresh(), "get_bytes", server.url("/x"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("status", [b"400 Bad Request", b"403 Forbidden"])
def test_a_proxy_refusing_connect_says_so(mode: str, status: bytes,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    proxy = RawServer(refuse)
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url())
        conn = HTTPConnection(cache=False, retry=RetryPolicy.none(), trust_env=True)
        with pytest.raises(FetchConnectionError) as err:
            call(mode, conn, "get_bytes", "https://127.0.0.2:9/model.bin?token=s3cret")
        message = str(err.value)
        assert "proxy refused" in message and status[:3].decode() in message
        assert "s3cret" not in message
        assert proxy.heads and proxy.heads[0].startswith(b"CONNECT 127.0.0.2:9 ")
    finally:
        proxy.close()
