"""``vllm_compat.install()`` into a stand-in ``vllm.connections``, and vLLM's media-connector
error mapping applied to what vllm_fetch raises, sync and async, against a real origin.

The stand-in package mirrors what vLLM 0.33 has: its own error classes and budget in
``connections``, and a ``connector`` module that imported them (and the global connection, as a
default argument) *before* ``install()`` ran. The mapping in the connector is rewritten from the
description in issue 11, not copied from vLLM.
"""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

import vllm_fetch
from tests.origin import Origin
from vllm_fetch import RetryPolicy, errors, vllm_compat

MiB = 1 << 20
MODES = ["sync", "async"]

STANDIN_EXCEPTIONS = '''
class VLLMValidationError(Exception):
    def __init__(self, message, *, parameter=None, value=None):
        super().__init__(message)
        self.parameter, self.value = parameter, value

    def __str__(self):  # as vLLM's: the message, then the parameter and value that are set
        named = [f"{k}={v}" for k, v in (("parameter", self.parameter), ("value", self.value))
                 if v is not None]
        return f"{super().__str__()} ({', '.join(named)})" if named else super().__str__()

class VLLMUnprocessableEntityError(Exception):
    pass
'''

STANDIN_CONNECTIONS = '''
import os
import threading
from standin_vllm.exceptions import VLLMValidationError

class HTTPResponseSizeExceededError(VLLMValidationError):
    def __init__(self, max_bytes, received_bytes):
        self.max_bytes, self.received_bytes = max_bytes, received_bytes
        super().__init__("too big", parameter="audio_filesize_mb",
                         value=received_bytes / (1 << 20))

class MediaDownloadSizeExceededError(ValueError):
    def __init__(self, max_bytes, received_bytes=None):
        self.max_bytes, self.received_bytes = max_bytes, received_bytes
        super().__init__(f"too big: {max_bytes / (1 << 20):g}")

class MediaRequestDownloadSizeExceededError(ValueError):
    pass

class MediaRequestDownloadBudget:
    def __init__(self):
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, size):
        limit = int(os.environ.get("VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB", "256")) << 20
        with self._lock:
            if self.used + size > limit:
                raise MediaRequestDownloadSizeExceededError(
                    f"Request media downloads exceed the budget ({self.used + size} bytes)")
            self.used += size

class HTTPConnection:
    def __getattr__(self, name):
        raise AssertionError(f"the stand-in's own client was used ({name})")

global_http_connection = HTTPConnection()
'''

STANDIN_CONNECTOR = '''
import aiohttp
import requests

from standin_vllm.connections import (
    HTTPConnection,
    MediaDownloadSizeExceededError,
    MediaRequestDownloadBudget,
    MediaRequestDownloadSizeExceededError,
    global_http_connection,
)
from standin_vllm.exceptions import VLLMUnprocessableEntityError, VLLMValidationError


def unprocessable(exc):
    """The media connector's mapping: 4xx (but 408/429), bad URLs, size errors and ValueErrors
    become 422; 5xx, 408, 429 and anything else is re-raised as it is."""
    if isinstance(exc, VLLMValidationError):
        return None
    if isinstance(exc, aiohttp.ClientResponseError):
        return "status" if exc.status < 500 and exc.status not in (408, 429) else None
    if isinstance(exc, requests.exceptions.HTTPError):
        if exc.response is None:
            return None
        code = exc.response.status_code
        return "status" if code < 500 and code not in (408, 429) else None
    if isinstance(exc, requests.exceptions.InvalidURL):
        return "url"
    if isinstance(exc, (MediaDownloadSizeExceededError, MediaRequestDownloadSizeExceededError)):
        return "size"
    if isinstance(exc, ValueError):
        return "value"
    return None


class MediaConnector:
    def __init__(self, connection: HTTPConnection = global_http_connection):
        self.connection = connection
        self.download_budget = MediaRequestDownloadBudget()  # one per chat request

    def fetch(self, url, *, timeout=None, max_bytes=None):
        try:
            return self.connection.get_bytes(url, timeout=timeout, allow_redirects=True,
                                             max_bytes=max_bytes,
                                             request_budget=self.download_budget)
        except Exception as exc:
            why = unprocessable(exc)
            if why is not None:
                raise VLLMUnprocessableEntityError(f"{why}: {exc}") from exc
            raise

    async def fetch_async(self, url, *, timeout=None, max_bytes=None):
        try:
            return await self.connection.async_get_bytes(
                url, timeout=timeout, allow_redirects=True, max_bytes=max_bytes,
                request_budget=self.download_budget)
        except Exception as exc:
            why = unprocessable(exc)
            if why is not None:
                raise VLLMUnprocessableEntityError(f"{why}: {exc}") from exc
            raise
'''


def _module(name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), module.__dict__)
    return module


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ModuleType]]:
    """The stand-in vLLM, imported in vLLM's order; ``install()``'s changes undone after."""
    monkeypatch.setattr(errors, "ADOPTED", {})
    fast = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.01)
    monkeypatch.setattr(vllm_fetch.global_http_connection, "retry", fast)
    modules = {"pkg": _module("standin_vllm", "", monkeypatch)}
    modules["exceptions"] = _module("standin_vllm.exceptions", STANDIN_EXCEPTIONS, monkeypatch)
    modules["connections"] = _module("standin_vllm.connections", STANDIN_CONNECTIONS,
                                     monkeypatch)
    modules["connector"] = _module("standin_vllm.connector", STANDIN_CONNECTOR, monkeypatch)
    yield modules


def api_status(mode: str, connector: Any, url: str, **kwargs: Any) -> tuple[int, BaseException]:
    """What vLLM's API would answer: 422 for an unprocessable entity, 500 for the rest."""
    unprocessable = sys.modules["standin_vllm.exceptions"].VLLMUnprocessableEntityError
    try:
        if mode == "sync":
            connector.fetch(url, **kwargs)
        else:
            asyncio.run(connector.fetch_async(url, **kwargs))
    except unprocessable as exc:
        return 422, exc
    except Exception as exc:
        return 500, exc
    return 200, AssertionError("no error")


def test_install_swaps_the_client_everywhere_vllm_bound_it(
        standin: dict[str, ModuleType]) -> None:
    connections, connector = standin["connections"], standin["connector"]
    old = connections.global_http_connection
    assert connector.MediaConnector().connection is old  # bound at import, before install
    assert vllm_compat.install(connections) is connections
    ours = vllm_fetch.global_http_connection
    assert connections.global_http_connection is ours
    assert connections.HTTPConnection is vllm_fetch.HTTPConnection
    assert connector.global_http_connection is ours
    assert connector.HTTPConnection is vllm_fetch.HTTPConnection
    assert connector.MediaConnector().connection is ours  # the default argument too
    vllm_compat.install(connections)  # idempotent
    assert connector.MediaConnector().connection is ours


def test_install_imports_vllm_connections_by_default(
        standin: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch) -> None:
    """With no module given, install() imports ``vllm.connections`` (here: the stand-in)."""
    monkeypatch.setitem(sys.modules, "vllm", standin["pkg"])
    monkeypatch.setitem(sys.modules, "vllm.connections", standin["connections"])
    assert vllm_compat.install() is standin["connections"]
    assert standin["connections"].global_http_connection is vllm_fetch.global_http_connection
    assert issubclass(errors.ADOPTED[errors.MediaDownloadSizeExceededError],
                      standin["connections"].MediaDownloadSizeExceededError)


def test_size_errors_are_vllms_classes_after_install(
        origin: Origin, standin: dict[str, ModuleType]) -> None:
    connections = standin["connections"]
    url = origin.serve_bytes("/big.bin", b"b" * 5000)
    vllm_text = ("Maximum file size exceeded: HTTP response exceeded maximum size of 1000 "
                 f"bytes (received at least 5000 bytes) (parameter=audio_filesize_mb, "
                 f"value={5000 / MiB}) from {url}")
    with pytest.raises(errors.HTTPResponseSizeExceededError) as before:
        vllm_fetch.global_http_connection.get_bytes(url, max_bytes=1000)
    assert not isinstance(before.value, connections.HTTPResponseSizeExceededError)
    assert str(before.value) == vllm_text
    vllm_compat.install(connections)
    # as run_batch does it: catch vLLM's class, read .received_bytes
    try:
        vllm_fetch.global_http_connection.get_bytes(url, max_bytes=1000)
    except connections.HTTPResponseSizeExceededError as exc:
        assert isinstance(exc, errors.HTTPResponseSizeExceededError)
        assert isinstance(exc, standin["exceptions"].VLLMValidationError)
        assert (exc.max_bytes, exc.received_bytes) == (1000, 5000)
        # vLLM's wording still, its VLLMValidationError's suffix once (not again from its
        # __str__, now in the MRO)
        assert str(exc) == vllm_text
    else:
        pytest.fail("not caught as vLLM's HTTPResponseSizeExceededError")


@pytest.mark.parametrize("mode", MODES)
def test_media_connector_maps_what_vllm_fetch_raises(
        origin: Origin, standin: dict[str, ModuleType], mode: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", "1")
    monkeypatch.setenv("VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB", "1")
    vllm_compat.install(standin["connections"])

    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(body=b"late")

    origin.serve_bytes(f"/{mode}/missing.png", b"no", status=404)
    origin.serve_bytes(f"/{mode}/broken.png", b"oops", status=500)
    origin.serve_bytes(f"/{mode}/huge.png", b"h" * (2 * MiB))
    origin.serve_bytes(f"/{mode}/a.png", b"a" * 700_000)
    origin.serve_bytes(f"/{mode}/b.png", b"b" * 700_000)
    origin.route(f"/{mode}/slow.png", stall)
    connector = standin["connector"].MediaConnector()

    status, exc = api_status(mode, connector, origin.url(f"/{mode}/missing.png"))
    assert status == 422 and str(exc).startswith("status:")
    status, exc = api_status(mode, connector, origin.url(f"/{mode}/broken.png"))
    assert status == 500 and isinstance(exc, errors.HTTPStatusError) and exc.status == 500
    status, exc = api_status(mode, connector, origin.url(f"/{mode}/huge.png"))
    huge = origin.url(f"/{mode}/huge.png")
    assert status == 422 and str(exc) == ("size: Remote media download exceeds VLLM_MAX_MEDIA_"
                                          f"DOWNLOAD_SIZE_MB=1 (received at least {2 * MiB} "
                                          f"bytes) from {huge}")
    assert isinstance(exc.__cause__, standin["connections"].MediaDownloadSizeExceededError)
    status, exc = api_status(mode, connector, origin.url(f"/{mode}/a.png"))
    assert status == 200  # within the request's budget
    status, exc = api_status(mode, connector, origin.url(f"/{mode}/b.png"))
    assert status == 422 and re.fullmatch(  # the stand-in budget's own words, then the URL
        r"size: Request media downloads exceed the budget \((\d+) bytes\) from "
        + re.escape(origin.url(f"/{mode}/b.png")), str(exc))
    assert isinstance(exc.__cause__, standin["connections"].MediaRequestDownloadSizeExceededError)
    assert isinstance(exc.__cause__, errors.FetchError)
    status, exc = api_status(mode, connector, f"httpx://127.0.0.1:{origin.port}/{mode}/a.png")
    assert status == 422 and str(exc).startswith(("url:", "value:"))
    status, exc = api_status(mode, connector, origin.url(f"/{mode}/slow.png"), timeout=0.4)
    assert status == 500 and isinstance(exc, errors.FetchTimeoutError)  # re-raised as it is
    assert origin.count(f"/{mode}/missing.png") == 1 and origin.count(f"/{mode}/a.png") == 1
