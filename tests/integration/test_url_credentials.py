"""URL userinfo and a caller's own Authorization header, sync and async, on every request path
(bodies, raw responses, downloads, ranged parts, same-origin redirects): the caller's header
wins, and is the only Authorization the origin receives; userinfo alone is sent as Basic."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.cache_origin import Resource, serve_resource
from tests.helpers import call
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy

MODES = ["sync", "async"]
BASIC = "Basic " + base64.b64encode(b"u:p").decode()
BEARER = "Bearer caller-t0ken"
#: (userinfo in the URL, the caller's headers, every Authorization the origin must receive)
CASES = {
    "both": (True, {"Authorization": BEARER}, [BEARER]),
    "both-lowercase": (True, {"authorization": BEARER}, [BEARER]),
    "userinfo-only": (True, {}, [BASIC]),
    "header-only": (False, {"Authorization": BEARER}, [BEARER]),
}


def echo(origin: Origin, path: str) -> None:
    """``path`` answers with the Authorization fields it received, every one of them."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(request.headers.getall("Authorization", []))
    origin.route(path, handler)


def target(origin: Origin, path: str, userinfo: bool) -> str:
    return f"http://{'u:p@' if userinfo else ''}127.0.0.1:{origin.port}{path}"


@pytest.fixture
def conn() -> HTTPConnection:
    return HTTPConnection(cache=False, retry=RetryPolicy.none())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["get_json", "get_bytes"])
@pytest.mark.parametrize("case", CASES)
def test_bodies(mode: str, method: str, case: str, origin: Origin,
                conn: HTTPConnection) -> None:
    userinfo, headers, expected = CASES[case]
    echo(origin, "/echo")
    got = call(mode, conn, method, target(origin, "/echo", userinfo), extra_headers=headers)
    assert (got if method == "get_json" else json.loads(got)) == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_raw_responses(mode: str, case: str, origin: Origin, conn: HTTPConnection) -> None:
    userinfo, headers, expected = CASES[case]
    echo(origin, "/echo")
    url = target(origin, "/echo", userinfo)
    if mode == "sync":
        with conn.get_response(url, extra_headers=headers) as response:
            got = response.json()
    else:
        async def run() -> Any:
            async with await conn.get_async_response(url, extra_headers=headers) as response:
                return await response.json()
        got = asyncio.run(run())
    assert got == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_downloads(mode: str, case: str, origin: Origin, conn: HTTPConnection,
                   tmp_path: Path) -> None:
    userinfo, headers, expected = CASES[case]
    echo(origin, "/echo")
    saved = call(mode, conn, "download_file", target(origin, "/echo", userinfo),
                 tmp_path / "echo.json", extra_headers=headers, progress=False)
    assert json.loads(Path(saved).read_bytes()) == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_ranged_parts(mode: str, case: str, origin: Origin, conn: HTTPConnection,
                      tmp_path: Path) -> None:
    userinfo, headers, expected = CASES[case]
    data = os.urandom(2 * 1024 * 1024 + 3)
    ranged, received = RangeFile(data), []

    async def handler(request: web.Request) -> web.StreamResponse:
        received.append((request.headers.get("Range"), request.headers.getall("Authorization",
                                                                               [])))
        return await ranged.handle(request)

    ranged.origin = origin
    origin.route("/big", handler)
    saved = call(mode, conn, "download_file", target(origin, "/big", userinfo),
                 tmp_path / "big.bin", extra_headers=headers, connections=4, progress=False,
                 expected_sha256=sha256(data))
    assert Path(saved).read_bytes() == data
    assert len([r for r, _ in received if r is not None and not r.endswith("-")]) >= 2
    assert all(sent == expected for _, sent in received)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_same_origin_redirect_hops(mode: str, case: str, origin: Origin,
                                   conn: HTTPConnection) -> None:
    userinfo, headers, expected = CASES[case]
    echo(origin, "/echo")
    origin.serve_bytes("/go", b"", status=302, headers={"Location": "/echo"})
    got = call(mode, conn, "get_json", target(origin, "/go", userinfo), extra_headers=headers)
    assert got == expected
    sent = origin.seen("/go")[0].headers
    assert [v for k, v in sent.items() if k.lower() == "authorization"] == expected


@pytest.mark.parametrize("mode", MODES)
def test_the_userinfo_stays_part_of_the_cache_identity(mode: str, origin: Origin,
                                                       tmp_path: Path) -> None:
    """Only what is sent changes: with and without userinfo (the same caller header, the same
    request on the wire), two tenants, two stored copies."""
    cache = FetchCache(tmp_path / "cache", allow_private=True)
    conn = HTTPConnection(cache=cache, retry=RetryPolicy.none())
    serve_resource(origin, "/r", Resource(b"mine", cache_control="max-age=600"))
    with_userinfo, without = target(origin, "/r", True), target(origin, "/r", False)
    for url in (with_userinfo, with_userinfo, without, without):
        assert call(mode, conn, "get_bytes", url, extra_headers={"Authorization": BEARER}) == \
            b"mine"
    assert [seen.headers.get("Authorization") for seen in origin.seen("/r")] == [BEARER] * 2
    conn.close()
    cache.close()
