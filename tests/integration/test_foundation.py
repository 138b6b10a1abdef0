"""The foundation against a real loopback origin: every method, sync and async."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web

from tests.helpers import call, leftovers
from tests.origin import Origin, cut_after, sha256
from vllm_fetch import (
    FetchError,
    HTTPConnection,
    HTTPStatusError,
    IdleTimeoutError,
    InvalidURLError,
    RetryPolicy,
    TruncatedBodyError,
    global_http_connection,
)

MODES = ["sync", "async"]
BODY = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
def conn() -> HTTPConnection:
    # These tests count requests at the origin: the cache (tests/integration/test_cache*.py)
    # would answer some of them.
    return HTTPConnection(retry=RetryPolicy.none(), cache=False)


@pytest.mark.parametrize("mode", MODES)
def test_get_bytes_text_json(mode: str, origin: Origin, conn: HTTPConnection) -> None:
    blob = origin.serve_bytes("/blob", BODY)
    text = origin.serve_bytes("/text", "café".encode("latin-1"),
                              headers={"Content-Type": "text/plain; charset=iso-8859-1"})
    doc = origin.serve_bytes("/doc", json.dumps({"a": [1, 2]}).encode(),
                             headers={"Content-Type": "application/json"})
    assert sha256(call(mode, conn, "get_bytes", blob)) == sha256(BODY)
    assert call(mode, conn, "get_text", text) == "café"
    assert call(mode, conn, "get_json", doc) == {"a": [1, 2]}


def test_sync_get_json_of_a_body_that_is_not_json_raises_as_requests_does(
        origin: Origin, conn: HTTPConnection) -> None:
    import requests

    for path, body in (("/not-json", b"<html>"), ("/png", b"\x89PNG\r\n\x1a\n\xff\xfe\xfd")):
        url = origin.serve_bytes(path, body, headers={"Content-Type": "text/html"})
        with pytest.raises(requests.exceptions.JSONDecodeError) as info:
            conn.get_json(url)
        assert isinstance(info.value, json.JSONDecodeError) and isinstance(info.value, ValueError)


def test_async_get_json_decodes_as_aiohttp_does(origin: Origin, conn: HTTPConnection) -> None:
    """vLLM's ``async_get_json`` is ``await r.json()``: a Content-Type that is not JSON is
    aiohttp's ``ContentTypeError``; an empty body is None; the charset is honoured."""
    import aiohttp

    url = "http://u:SECRET@" + origin.url("/page?token=TOKEN").split("://", 1)[1]
    origin.serve_bytes("/page", b'{"a": 1}', headers={"Content-Type": "text/html"})
    with pytest.raises(aiohttp.ContentTypeError) as info:
        asyncio.run(conn.async_get_json(url))
    error = info.value
    assert isinstance(error, ValueError)
    assert error.status == 200 and error.headers is not None
    assert "unexpected mimetype: text/html" in error.message
    assert "SECRET" not in str(error) and "TOKEN" not in str(error)
    assert "SECRET" not in str(error.request_info) and "TOKEN" not in str(error.request_info)

    empty = origin.serve_bytes("/empty", b" \n", headers={"Content-Type": "application/json"})
    assert asyncio.run(conn.async_get_json(empty)) is None
    latin = origin.serve_bytes("/latin", '"café"'.encode("latin-1"),
                               headers={"Content-Type": "application/json; charset=latin-1"})
    assert asyncio.run(conn.async_get_json(latin)) == "café"
    problem = origin.serve_bytes("/problem", b'{"title": "x"}',
                                 headers={"Content-Type": "application/problem+json"})
    assert asyncio.run(conn.async_get_json(problem)) == {"title": "x"}
    broken = origin.serve_bytes("/broken", b"{", headers={"Content-Type": "application/json"})
    with pytest.raises(json.JSONDecodeError):
        asyncio.run(conn.async_get_json(broken))


@pytest.mark.parametrize("mode", MODES)
def test_download_file(mode: str, origin: Origin, conn: HTTPConnection, tmp_path: Path) -> None:
    url = origin.serve_bytes("/weights.bin", BODY)
    target = tmp_path / "weights.bin"
    assert call(mode, conn, "download_file", url, target) == target
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert leftovers(tmp_path) == ["weights.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_fetch_file_headers_are_case_insensitive_as_fetch_bytes_are(
        mode: str, origin: Origin, conn: HTTPConnection, tmp_path: Path) -> None:
    url = origin.serve_bytes("/h.bin", BODY, headers={"X-Model-Rev": "abc"})
    result = call(mode, conn, "fetch_file", url, tmp_path / "h.bin")
    body = call(mode, conn, "fetch_bytes", url)
    for headers in (result.headers, body.headers):
        assert headers["x-model-rev"] == headers["X-MODEL-REV"] == "abc"
        assert headers.get("content-length") == str(len(BODY))
    # a result crosses a process pool, and copies, as it did with a plain dict
    for same in (pickle.loads(pickle.dumps(result)), copy.deepcopy(result)):
        assert same == result and same.headers["x-model-rev"] == "abc"
    assert dataclasses.asdict(result)["headers"]["X-Model-Rev"] == "abc"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "http://", "",
                                 "127.0.0.1/x", "http:///path", "gopher://127.0.0.1/"])
def test_invalid_urls(mode: str, url: str, conn: HTTPConnection, origin: Origin) -> None:
    with pytest.raises(InvalidURLError) as info:
        call(mode, conn, "get_bytes", url)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FetchError)
    assert origin.requests == []


@pytest.mark.parametrize("mode", MODES)
def test_signed_url_reaches_origin_verbatim(mode: str, origin: Origin,
                                            conn: HTTPConnection) -> None:
    origin.serve_bytes("/bucket/key", b"ok")
    raw = ("/bucket/key?X-Amz-Credential=AKIA%2F20261124%2Fus-east-1%2Fs3%2Faws4_request"
           "&X-Amz-Signature=ab%2Bcd%3D%3D&X-Amz-SignedHeaders=host&x=%7e")
    assert call(mode, conn, "get_bytes", origin.url(raw)) == b"ok"
    assert origin.seen("/bucket/key")[0].raw_path == raw


@pytest.mark.parametrize("mode", MODES)
def test_user_agent_names_vllm_and_vllm_fetch(mode: str, origin: Origin,
                                              conn: HTTPConnection) -> None:
    url = origin.serve_bytes("/ua", b"x")
    call(mode, conn, "get_bytes", url, extra_headers={"X-Trace": "1"})
    headers = origin.seen("/ua")[0].headers
    assert "vLLM/" in headers["User-Agent"] and "vllm_fetch/" in headers["User-Agent"]
    assert headers["X-Trace"] == "1"


@pytest.mark.parametrize("mode", MODES)
def test_404_raises_with_status(mode: str, origin: Origin, conn: HTTPConnection) -> None:
    with pytest.raises(HTTPStatusError) as info:
        call(mode, conn, "get_bytes", origin.url("/missing?token=secret"))
    assert info.value.status == 404
    assert "secret" not in str(info.value) and "secret" not in (info.value.url or "")
    assert origin.count("/missing") == 1


@pytest.mark.parametrize("mode", MODES)
def test_unfollowed_redirect_is_an_error(mode: str, origin: Origin,
                                         conn: HTTPConnection) -> None:
    origin.serve_bytes("/moved", b"redirect body", status=302,
                       headers={"Location": "/elsewhere"})
    with pytest.raises(HTTPStatusError) as info:
        call(mode, conn, "get_bytes", origin.url("/moved"), allow_redirects=False)
    assert info.value.status == 302
    assert origin.count("/elsewhere") == 0


@pytest.mark.parametrize("mode", MODES)
def test_redirect_followed(mode: str, origin: Origin, conn: HTTPConnection) -> None:
    origin.serve_bytes("/moved", b"", status=301, headers={"Location": "/final"})
    origin.serve_bytes("/final", b"here")
    assert call(mode, conn, "get_bytes", origin.url("/moved")) == b"here"


@pytest.mark.parametrize("mode", MODES)
def test_truncated_body_leaves_nothing(mode: str, origin: Origin, conn: HTTPConnection,
                                       tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await cut_after(request, BODY, len(BODY) // 2)

    url = origin.route("/cut", handler)
    target = tmp_path / "out.bin"
    with pytest.raises(TruncatedBodyError):
        call(mode, conn, "download_file", url, target)
    assert leftovers(tmp_path) == []
    with pytest.raises(TruncatedBodyError):
        call(mode, conn, "get_bytes", url)


@pytest.mark.parametrize("mode", MODES)
def test_failure_keeps_existing_target(mode: str, origin: Origin, conn: HTTPConnection,
                                       tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"previous version")
    with pytest.raises(HTTPStatusError):
        call(mode, conn, "download_file", origin.url("/nope"), target)
    assert target.read_bytes() == b"previous version"
    assert leftovers(tmp_path) == ["model.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_stalled_origin_hits_idle_timeout(mode: str, origin: Origin, tmp_path: Path) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        await asyncio.sleep(30)
        return response

    url = origin.route("/stall", stall)
    conn = HTTPConnection(retry=RetryPolicy.none(), idle_timeout=0.5)
    with pytest.raises(IdleTimeoutError):
        call(mode, conn, "download_file", url, tmp_path / "out")
    assert leftovers(tmp_path) == []


def test_cancelled_async_download_leaves_nothing(origin: Origin, tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await response.prepare(request)
        await response.write(BODY[:65536])
        await asyncio.sleep(30)
        return response

    url = origin.route("/slow", slow)
    target = tmp_path / "out.bin"

    async def main() -> None:
        conn = HTTPConnection(retry=RetryPolicy.none())
        task = asyncio.create_task(conn.async_download_file(url, target))
        while not any(p.name.endswith((".tmp", ".part")) for p in tmp_path.iterdir()):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await conn.aclose()

    del started
    asyncio.run(main())
    assert leftovers(tmp_path) == []


def test_global_instance_survives_successive_asyncio_runs(origin: Origin) -> None:
    url = origin.serve_bytes("/g", b"global")
    for _ in range(2):
        assert asyncio.run(global_http_connection.async_get_bytes(url)) == b"global"


def test_one_session_per_loop_in_threads(origin: Origin) -> None:
    url = origin.serve_bytes("/t", BODY)
    conn = HTTPConnection()

    def in_own_loop(_: int) -> str:
        async def twice() -> str:
            await conn.async_get_bytes(url)
            return sha256(await conn.async_get_bytes(url))
        return asyncio.run(twice())

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(in_own_loop, range(4))) == {sha256(BODY)}


def test_sync_side_from_16_threads(origin: Origin) -> None:
    url = origin.serve_bytes("/many", BODY)
    conn = HTTPConnection(cache=False)  # 64 transfers: no single-flight, no cache
    with ThreadPoolExecutor(16) as pool:
        digests = list(pool.map(lambda _: sha256(conn.get_bytes(url)), range(64)))
    conn.close()
    assert set(digests) == {sha256(BODY)}
    assert origin.count("/many") == 64


@pytest.mark.parametrize("mode", MODES)
def test_reuse_client_false(mode: str, origin: Origin) -> None:
    url = origin.serve_bytes("/fresh", b"fresh")
    conn = HTTPConnection(reuse_client=False, retry=RetryPolicy.none())
    assert call(mode, conn, "get_bytes", url) == b"fresh"
    assert call(mode, conn, "get_bytes", url) == b"fresh"


def test_get_response_raw(origin: Origin) -> None:
    url = origin.serve_bytes("/raw", b"raw body")
    with HTTPConnection() as conn:
        response = conn.get_response(url, stream=True)
        with response:
            assert response.status_code == 200
            assert response.raw.read() == b"raw body"
        missing = conn.get_response(origin.url("/absent"))
        assert missing.status_code == 404


def test_get_async_response_raw(origin: Origin) -> None:
    url = origin.serve_bytes("/raw", b"raw body")

    async def main() -> None:
        async with HTTPConnection() as conn:
            async with await conn.get_async_response(url) as response:
                assert response.status == 200
                assert await response.read() == b"raw body"
            response = await (await conn.get_async_response(url))
            assert await response.read() == b"raw body"
            response.release()

    asyncio.run(main())


def test_async_clients_close_cleanly(origin: Origin) -> None:
    async def main() -> None:
        conn = HTTPConnection()
        session = await conn.get_async_client()
        assert session is await conn.get_async_client()
        await conn.aclose()
        assert session.closed

    asyncio.run(main())


def test_sync_programs_never_import_aiohttp(origin: Origin) -> None:
    """aiohttp costs ~0.1 s to import: a sync-only program (the CLI) must not pay for it."""
    import subprocess
    import sys

    url = origin.serve_bytes("/sync-only", b"sync")
    code = ("import sys; from vllm_fetch import HTTPConnection; "
            f"assert HTTPConnection(cache=False).get_bytes({url!r}) == b'sync'; "
            "print(sorted(m for m in sys.modules if m.startswith('aiohttp')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
