"""Faults S7/S11: no credential or query string in any message, log, CLI line or exception
chain, sync and async (issue 13, item 3).

A password holding ``?``, ``#``, ``/``, ``@``, ``%`` or whitespace ends the URL's authority early
for the parser, so what it calls the host and port are really the user name and the start of
the password; every message hides everything up to the last ``@``. The exceptions of requests,
aiohttp and urllib3 in ``__cause__`` / ``__context__`` are replaced by ``RedactedError``s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import call
from tests.origin import Origin
from tests.rawserver import RawServer
from vllm_fetch import FetchError, HTTPConnection, RetryPolicy
from vllm_fetch.core.scrub import RedactedError

MODES = ["sync", "async"]
SECRETS = ("T0Pk", "S3CRETz")
SEPARATORS = ["?", "#", "/", "@", "%", "%zz", " ", "\t"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return found


def assert_no_secret(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    for link in chain(exc):
        texts = [str(link), repr(link), repr(link.args), str(getattr(link, "url", ""))]
        for text in texts:
            assert not any(s in text for s in SECRETS), (type(link), text)
    assert not any(s in caplog.text for s in SECRETS), caplog.text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sep", SEPARATORS)
def test_a_password_with_a_delimiter_is_never_quoted(
    mode: str, sep: str, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://alice:{SECRETS[0]}{sep}{SECRETS[1]}@127.0.0.1:{origin.port}/x"
    conn = HTTPConnection(cache=False, retry=RetryPolicy(max_attempts=2, backoff_base=0.01))
    with caplog.at_level(logging.DEBUG, logger="vllm_fetch"):
        try:
            call(mode, conn, "get_bytes", url, timeout=5)
        except FetchError as exc:
            assert_no_secret(exc, caplog)
        else:  # parsed as userinfo: the origin answered 404 for /x, and that is an error too
            pytest.fail("expected an error")
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_password_that_parses_as_a_port_never_reaches_a_message(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``alice:1234/…@host`` parses as host alice, port 1234: the "port" is the password."""
    url = f"http://alice:1234/{SECRETS[1]}@127.0.0.1:{closed_port()}/x"
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none(),
                          resolver=lambda host, port: ["127.0.0.1"])
    with caplog.at_level(logging.DEBUG, logger="vllm_fetch"), \
            pytest.raises(FetchError) as info:
        call(mode, conn, "get_bytes", url, timeout=5)
    assert_no_secret(info.value, caplog)
    assert "1234" not in str(info.value) and "alice" not in str(info.value)
    conn.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["get_bytes", "download_file"])
def test_the_chain_never_carries_a_query(mode: str, method: str, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/w.bin?X-Amz-Signature={SECRETS[1]}"
    conn = HTTPConnection(cache=False, retry=RetryPolicy(max_attempts=2, backoff_base=0.01))
    args = (tmp_path / "w.bin",) if method == "download_file" else ()
    with caplog.at_level(logging.DEBUG, logger="vllm_fetch"), \
            pytest.raises(FetchError) as info:
        call(mode, conn, method, url, *args, timeout=5)
    assert_no_secret(info.value, caplog)
    # the library's own error is still attached, by type, for debugging
    stand_ins = [e for e in chain(info.value) if isinstance(e, RedactedError)]
    assert stand_ins and any(("requests" in e.original_type or "aiohttp" in e.original_type)
                             for e in stand_ins)
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_status_errors_and_their_chain_carry_no_query(
    mode: str, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    url = origin.serve_bytes("/gone", b"no", status=404) + f"?sig={SECRETS[1]}"
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none())
    with caplog.at_level(logging.DEBUG, logger="vllm_fetch"), \
            pytest.raises(FetchError) as info:
        call(mode, conn, "get_bytes", f"http://u:{SECRETS[0]}@" + url.removeprefix("http://"))
    assert_no_secret(info.value, caplog)
    assert origin.count("/gone") == 1
    conn.close()


def garbage_status_line(conn: socket.socket, head: bytes) -> None:
    conn.sendall(b"\x00\x01 not HTTP\r\n\r\n")


async def open_async_response(conn: HTTPConnection, url: str, headers: dict[str, str]) -> int:
    async with await conn.get_async_response(url, extra_headers=headers, timeout=5) as response:
        return response.status


@pytest.mark.parametrize("server", ["garbage", "closed"])
def test_raw_async_response_errors_carry_no_secret(server: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """``get_async_response``'s errors come when the context is awaited, after the method
    returned: they are scrubbed too (aiohttp's ClientResponseError quotes the URL and every
    request header in its ``request_info``), as ``get_response``'s are on the sync side."""
    raw = RawServer(garbage_status_line) if server == "garbage" else None
    port = raw.port if raw is not None else closed_port()
    url = f"http://u:{SECRETS[0]}@127.0.0.1:{port}/x?sig={SECRETS[1]}"
    headers = {"X-Api-Key": SECRETS[1]}
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none())
    try:
        with caplog.at_level(logging.DEBUG, logger="vllm_fetch"), \
                pytest.raises(FetchError) as info:
            asyncio.run(open_async_response(conn, url, headers))
        assert_no_secret(info.value, caplog)
        with pytest.raises(FetchError) as sync_info:
            conn.get_response(url, extra_headers=headers, timeout=5)
        assert_no_secret(sync_info.value, caplog)
    finally:
        conn.close()
        if raw is not None:
            raw.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["fetch_bytes", "fetch_file"])
def test_result_reprs_carry_no_secret(mode: str, method: str, origin: Origin,
                                      tmp_path: Path) -> None:
    """A FetchResult or DownloadResult logged with %r shows the URL redacted; ``.url`` itself
    is the URL that was fetched, query included (the caller's own data), without its userinfo
    on either side (aiohttp drops it, requests kept it)."""
    origin.serve_bytes("/w.bin", b"weights")
    url = f"http://u:{SECRETS[0]}@127.0.0.1:{origin.port}/w.bin?sig={SECRETS[1]}"
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none())
    args = (tmp_path / "w.bin",) if method == "fetch_file" else ()
    result = call(mode, conn, method, url, *args, timeout=5)
    assert result.url == f"http://127.0.0.1:{origin.port}/w.bin?sig={SECRETS[1]}"
    text = repr(result)
    assert f"127.0.0.1:{origin.port}/w.bin" in text
    assert not any(s in text for s in SECRETS), text
    conn.close()


@pytest.mark.parametrize("verbose", [[], ["-v"]])
@pytest.mark.parametrize("sep", ["?", "#", "/"])
def test_the_cli_prints_no_password(verbose: list[str], sep: str, origin: Origin,
                                    tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("vllm-fetch")
    url = f"http://alice:{SECRETS[0]}{sep}{SECRETS[1]}@127.0.0.1:{origin.port}/x"
    env = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(tmp_path / "c"),
           "VLLM_FETCH_MAX_RETRIES": "0"}
    result = subprocess.run([str(script), *verbose, "get", url, "-o", str(tmp_path / "x")],
                            cwd=tmp_path, env=env, text=True, capture_output=True, timeout=60,
                            check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "vllm-fetch: error:" in result.stderr
    assert not any(s in output for s in SECRETS), output
    assert "Traceback" not in output
    assert not (tmp_path / "x").exists()
