"""vllm_fetch.connections offers every public name and parameter of vLLM 0.33's vllm.connections.

The table below was written by reading ``vllm/connections.py`` in the vllm 0.33.0 wheel: for
each method, vLLM's parameters (after ``self``) in order, with their kind and default.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

import pytest

import vllm_fetch
import vllm_fetch.connections as connections
from vllm_fetch._version import DEFAULT_USER_AGENT
from vllm_fetch.core.media_limits import CallBudget, MediaRequestDownloadBudget, charge, media_cap
from vllm_fetch.core.urls import quote_url, validate_url
from vllm_fetch.errors import (
    FetchError,
    HTTPResponseSizeExceededError,
    InvalidURLError,
    MediaDownloadSizeExceededError,
    MediaRequestDownloadSizeExceededError,
)

MiB = 1 << 20
REQUIRED = inspect.Parameter.empty
POS, KW = "positional", "keyword-only"

#: Every public name vLLM 0.33's vllm.connections defines.
VLLM_033_NAMES = (
    "HTTPConnection",
    "HTTPResponseSizeExceededError",
    "MediaDownloadSizeExceededError",
    "MediaRequestDownloadBudget",
    "MediaRequestDownloadSizeExceededError",
    "global_http_connection",
)

_GET_BYTES = [("url", POS, REQUIRED), ("timeout", KW, None), ("allow_redirects", KW, True),
              ("max_bytes", KW, None), ("request_budget", KW, None)]
_GET_TEXT = [("url", POS, REQUIRED), ("timeout", KW, None)]
_DOWNLOAD = [("url", POS, REQUIRED), ("save_path", POS, REQUIRED), ("timeout", KW, None),
             ("chunk_size", KW, 128)]

#: (method, is a coroutine function in vLLM) -> vLLM 0.33's parameters.
VLLM_033_METHODS: dict[tuple[str, bool], list[tuple[str, str, Any]]] = {
    ("__init__", False): [("reuse_client", KW, True)],
    ("get_sync_client", False): [],
    ("get_async_client", True): [],
    ("get_response", False): [("url", POS, REQUIRED), ("stream", KW, False),
                              ("timeout", KW, None), ("extra_headers", KW, None),
                              ("allow_redirects", KW, True)],
    ("get_async_response", True): [("url", POS, REQUIRED), ("timeout", KW, None),
                                   ("extra_headers", KW, None), ("allow_redirects", KW, True)],
    ("get_bytes", False): _GET_BYTES,
    ("async_get_bytes", True): _GET_BYTES,
    ("get_text", False): _GET_TEXT,
    ("async_get_text", True): _GET_TEXT,
    ("get_json", False): _GET_TEXT,
    ("async_get_json", True): _GET_TEXT,
    ("download_file", False): _DOWNLOAD,
    ("async_download_file", True): _DOWNLOAD,
}

#: The other classes' constructors and methods.
VLLM_033_OTHERS: dict[tuple[type, str], list[tuple[str, str, Any]]] = {
    (HTTPResponseSizeExceededError, "__init__"): [("max_bytes", POS, REQUIRED),
                                                  ("received_bytes", POS, REQUIRED)],
    (MediaDownloadSizeExceededError, "__init__"): [("max_bytes", POS, REQUIRED),
                                                   ("received_bytes", POS, None)],
    (MediaRequestDownloadBudget, "__init__"): [],
    (MediaRequestDownloadBudget, "charge"): [("size", POS, REQUIRED)],
}

#: Defaults that differ on purpose, and why no caller's behaviour depends on them.
DIFFERENT_DEFAULTS = {
    ("download_file", "chunk_size"): "the read size only: vllm_fetch's is tuned for throughput",
    ("async_download_file", "chunk_size"): "the read size only (see download_file)",
}


def _kind(param: inspect.Parameter) -> str:
    if param.kind is param.KEYWORD_ONLY:
        return KW
    assert param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD), param
    return POS


def _check(owner: str, func: Any, expected: list[tuple[str, str, Any]]) -> None:
    params = list(inspect.signature(func).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    ours = {p.name: p for p in params}
    positional = [p.name for p in params if _kind(p) == POS]
    assert positional == [name for name, kind, _ in expected if kind == POS], owner
    for name, kind, default in expected:
        assert name in ours, f"{owner} lacks vLLM's parameter {name!r}"
        assert _kind(ours[name]) == kind, f"{owner}({name}) is {_kind(ours[name])}"
        if (owner, name) not in DIFFERENT_DEFAULTS:
            assert ours[name].default == default, f"{owner}({name}) default"
    vllm_names = {name for name, _, _ in expected}
    for param in params:  # vllm_fetch's additions never change what vLLM's calls mean
        if param.name not in vllm_names:
            assert param.kind is param.KEYWORD_ONLY, f"{owner}({param.name})"
            assert param.default is not REQUIRED, f"{owner}({param.name}) needs a default"


@pytest.mark.parametrize(("method", "is_async"), list(VLLM_033_METHODS))
def test_http_connection_methods_accept_vllm_parameters(method: str, is_async: bool) -> None:
    func = getattr(connections.HTTPConnection, method)
    if method != "__init__":
        assert inspect.iscoroutinefunction(func) is is_async
    _check(method, func, VLLM_033_METHODS[(method, is_async)])


@pytest.mark.parametrize(("cls", "method"), list(VLLM_033_OTHERS))
def test_other_classes_accept_vllm_parameters(cls: type, method: str) -> None:
    _check(f"{cls.__name__}.{method}", getattr(cls, method), VLLM_033_OTHERS[(cls, method)])


@pytest.mark.parametrize("name", VLLM_033_NAMES)
def test_every_vllm_name_is_importable_from_connections_and_the_root(name: str) -> None:
    assert name in connections.__all__
    assert getattr(vllm_fetch, name) is getattr(connections, name)
    assert name in vllm_fetch.__all__


def test_size_errors_carry_vllms_attributes() -> None:
    error = HTTPResponseSizeExceededError(100, 150)
    assert (error.max_bytes, error.received_bytes) == (100, 150)
    assert (error.parameter, error.value) == ("audio_filesize_mb", 150 / MiB)
    media = MediaDownloadSizeExceededError(2 * MiB)
    assert (media.max_bytes, media.received_bytes) == (2 * MiB, None)
    for cls in (HTTPResponseSizeExceededError, MediaDownloadSizeExceededError,
                MediaRequestDownloadSizeExceededError):
        assert issubclass(cls, FetchError) and issubclass(cls, ValueError)


def test_size_error_messages_are_vllms_word_for_word() -> None:
    """str() is what vLLM 0.33's own exception says (VLLMValidationError's parameter/value
    suffix included), then `` from <url>`` when the URL is known, then the attempts."""
    vllm_http = ("Maximum file size exceeded: HTTP response exceeded maximum size of 100 bytes "
                 f"(received at least 150 bytes) (parameter=audio_filesize_mb, value={150 / MiB})")
    assert str(HTTPResponseSizeExceededError(100, 150)) == vllm_http
    error = HTTPResponseSizeExceededError(100, 150, url="http://h/a.png")
    assert str(error) == vllm_http + " from http://h/a.png"
    error.attempts = 3
    assert str(error) == vllm_http + " from http://h/a.png (after 3 attempts)"
    assert error.args == (vllm_http.rpartition(" (parameter=")[0],)  # vLLM's message, as args
    assert str(MediaDownloadSizeExceededError(2 * MiB)) == (
        "Remote media download exceeds VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB=2")
    assert str(MediaDownloadSizeExceededError(MiB, MiB + 1, url="http://h/b.png")) == (
        "Remote media download exceeds VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB=1 "
        "(received at least 1048577 bytes) from http://h/b.png")
    assert str(MediaDownloadSizeExceededError(MiB // 2)) == (
        "Remote media download exceeds VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB=0.5")  # vLLM's :g
    budget = MediaRequestDownloadSizeExceededError("Request media downloads exceed X=1 (2 bytes "
                                                   "received, including retried attempts).",
                                                   url="http://h/c.png")
    assert str(budget) == ("Request media downloads exceed X=1 (2 bytes received, including "
                           "retried attempts). from http://h/c.png")


# -- vLLM's private hooks: _validate_http_url and _headers -------------------------------------
def test_private_hooks_have_vllms_signatures() -> None:
    cls = connections.HTTPConnection
    validate = list(inspect.signature(cls._validate_http_url).parameters.values())
    assert [(p.name, p.kind) for p in validate] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("url", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    headers = list(inspect.signature(cls._headers).parameters.values())
    assert [(p.name, p.kind) for p in headers] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("extras", inspect.Parameter.VAR_KEYWORD)]
    assert not inspect.iscoroutinefunction(cls._validate_http_url)
    assert not inspect.iscoroutinefunction(cls._headers)


@pytest.mark.parametrize("url", ["http://h/a.png", "https://h:8443/a?b=c", "HTTP://h/",
                                 "http://h/a b.png"])
def test_validate_http_url_accepts_http_urls(url: str) -> None:
    assert connections.HTTPConnection(cache=False)._validate_http_url(url) is None


@pytest.mark.parametrize("url", ["ftp://h/a.png", "httpx://h/a.png", "file:///etc/passwd",
                                 "h/a.png", "data:image/png;base64,AAAA"])
def test_validate_http_url_refuses_other_schemes_as_vllm(url: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        connections.HTTPConnection(cache=False)._validate_http_url(url)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == ("Invalid HTTP URL: A valid HTTP URL must have scheme 'http' or "
                               "'https'.")  # vLLM's words


def test_validate_http_url_refuses_what_no_call_would_send() -> None:
    conn = connections.HTTPConnection(cache=False)
    for url in ("http://", "http://h\\@evil/a", "http://h/\x00"):
        with pytest.raises(InvalidURLError):
            conn._validate_http_url(url)


def test_headers_are_the_defaults_with_extras_on_top() -> None:
    conn = connections.HTTPConnection(cache=False)
    headers = conn._headers()
    assert headers == {"User-Agent": DEFAULT_USER_AGENT, "Accept-Encoding": "identity"}
    assert headers["User-Agent"].startswith("vLLM/")  # as vLLM's "vLLM/<version>"
    headers["X-Mine"] = "1"  # a new mapping every time, as vLLM's
    assert "X-Mine" not in conn._headers()
    assert conn._headers(Authorization="Bearer t") == {**conn._headers(),
                                                       "Authorization": "Bearer t"}
    replaced = conn._headers(**{"user-agent": "me/1", "accept-encoding": "gzip"})
    assert replaced == {"user-agent": "me/1", "accept-encoding": "gzip"}  # case-insensitive
    custom = connections.HTTPConnection(cache=False, user_agent="bot/2")
    assert custom._headers()["User-Agent"] == "bot/2"


# -- the media download limit ------------------------------------------------------------------
def test_media_limit_defaults_to_vllms_256_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", raising=False)
    assert media_cap(None) == (256 * MiB, True)
    assert media_cap(1000) == (1000, False)  # the smaller wins
    assert media_cap(256 * MiB) == (256 * MiB, True)  # a tie names the media limit, as vLLM
    assert media_cap(300 * MiB) == (256 * MiB, True)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_media_limit_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", value)
    assert media_cap(None) == (None, False)
    assert media_cap(10) == (10, False)


def test_media_limit_garbage_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", "lots")
    with pytest.raises(ValueError, match="VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB"):
        media_cap(None)


# -- the per-request budget --------------------------------------------------------------------
def test_budget_refuses_past_the_limit_and_keeps_its_total(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB", "1")
    budget = MediaRequestDownloadBudget()
    budget.charge(MiB)
    with pytest.raises(MediaRequestDownloadSizeExceededError) as info:
        budget.charge(1)
    assert str(info.value) == ("Request media downloads exceed "  # vLLM's wording
                               "VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB=1 (1048577 bytes "
                               "received, including retried attempts).")
    assert budget.used == MiB


def test_budget_off_when_the_limit_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB", "0")
    budget = MediaRequestDownloadBudget()
    budget.charge(10**12)
    assert budget.used == 0  # as vLLM: nothing is counted when there is no limit


def test_budget_is_thread_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB", "1")
    budget = MediaRequestDownloadBudget()
    refused = []

    def work() -> None:
        for _ in range(200):
            try:
                budget.charge(1024)
            except MediaRequestDownloadSizeExceededError:
                refused.append(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.used == MiB  # 1600 charges of 1 KiB: exactly 1024 fit
    assert len(refused) == 1600 - 1024


def test_a_vllm_budget_refusal_becomes_ours() -> None:
    class VllmBudget:  # vLLM's own class raises a plain ValueError subclass
        def charge(self, size: int) -> None:
            raise ValueError("Request media downloads exceed the limit")

    with pytest.raises(MediaRequestDownloadSizeExceededError, match="exceed the limit") as info:
        charge(VllmBudget(), 10, "http://h/a.png")
    assert info.value.url == "http://h/a.png"
    assert str(info.value) == "Request media downloads exceed the limit from http://h/a.png"


def test_call_budget_charges_what_no_transfer_charged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB", "1")
    budget = MediaRequestDownloadBudget()
    streamed = CallBudget(budget)
    streamed.charge(300)
    streamed.charge(300)  # a retried attempt counts again
    streamed.settle(300, None)
    assert budget.used == 600
    served = CallBudget(budget)  # a cache hit: nothing streamed
    served.settle(500, None)
    assert budget.used == 1100


# -- URLs with literal spaces ------------------------------------------------------------------
@pytest.mark.parametrize(("url", "sent"), [
    ("http://h/a b.png", "http://h/a%20b.png"),
    ("http://h/a%20b?q=x y#f g", "http://h/a%20b?q=x%20y#f%20g"),
    ("http://h/été.png", "http://h/%C3%A9t%C3%A9.png"),
    ("http://h/a{b}|c^d`e\"<>", "http://h/a%7Bb%7D%7Cc%5Ed%60e%22%3C%3E"),
    ("http://xn--bcher-kva.example/ä b", "http://xn--bcher-kva.example/%C3%A4%20b"),
])
def test_literal_spaces_are_quoted_as_requests_quotes_them(url: str, sent: str) -> None:
    assert quote_url(url) == sent
    assert validate_url(quote_url(url)) == sent


@pytest.mark.parametrize("url", [
    "http://h/a%7e/b?X-Amz-Signature=ab%2Fcd%3d&x=%41",
    "https://u:p@h:8443/p;a=1/~x/(y)!*'$,?q=[1]&r=@:#frag",
    "http://h/%25%zz",
])
def test_already_encoded_urls_stay_byte_for_byte(url: str) -> None:
    assert quote_url(url) is url


@pytest.mark.parametrize("url", [
    "http://evil.com\\@good.com/a b", "http://good.com/a b\r\nHost: evil", "http://go\tod.com/a b",
    "http://good.com/a\tb c", "http://a b.com/x", "http://u@v@good.com/a b",
])
def test_parser_differentials_are_still_refused(url: str) -> None:
    with pytest.raises(InvalidURLError):
        connections.HTTPConnection(cache=False).url_policy.check_url(quote_url(url))
