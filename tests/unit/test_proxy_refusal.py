"""A proxy refusing CONNECT: the status read from urllib3's message, and the error's wording."""

from __future__ import annotations

from vllm_fetch.core.proxy_refusal import proxy_refused, tunnel_status
from vllm_fetch.errors import FetchConnectionError


def test_tunnel_status() -> None:
    assert tunnel_status("Tunnel connection failed: 403 Forbidden") == 403
    assert tunnel_status("('Unable to connect to proxy', OSError('Tunnel connection failed: "
                         "400 Bad Request'))") == 400
    assert tunnel_status("Connection refused") is None


def test_the_error_says_the_proxy_refused() -> None:
    err = proxy_refused("https://h.example/x?…", 403)
    assert isinstance(err, FetchConnectionError) and isinstance(err, ConnectionError)
    assert "the proxy refused to open a tunnel to https://h.example/x?… with HTTP 403" in str(err)
    assert "with HTTP" not in str(proxy_refused("https://h.example/", None))
