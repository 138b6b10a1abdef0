"""``wire_length``: the one-pass answer every response meter asks for equals what
``parse_content_length`` and ``is_encoded`` say, for aiohttp's header type and a plain dict."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

import vllm_fetch.drivers.aiohttp_driver  # noqa: F401  (registers aiohttp's header types)
from vllm_fetch.core.body import is_encoded, parse_content_length, wire_length
from vllm_fetch.errors import ResponseHeadersError

CASES: list[dict[str, str]] = [
    {}, {"Content-Length": "102400"}, {"content-length": "0"}, {"Content-Length": " 7 "},
    {"Content-Length": "7, 7"}, {"Content-Length": "7, 8"}, {"Content-Length": "²"},
    {"Content-Length": "-1"}, {"Content-Length": "12", "Transfer-Encoding": "chunked"},
    {"Content-Length": "12", "Content-Encoding": "gzip"},
    {"Content-Length": "12", "Content-Encoding": " Identity "},
    {"Content-Length": "12", "Content-Encoding": ""}, {"Content-Encoding": "br"},
]


def slow(headers: Mapping[str, str]) -> object:
    try:
        length = parse_content_length(headers, "http://h/x")
    except ResponseHeadersError as exc:
        return str(exc)
    return None if is_encoded(headers) else length


def fast(headers: Mapping[str, str]) -> object:
    try:
        return wire_length(headers, "http://h/x")
    except ResponseHeadersError as exc:
        return str(exc)


@pytest.mark.parametrize("fields", CASES)
def test_one_pass_matches_the_two_checks(fields: dict[str, str]) -> None:
    proxy = CIMultiDictProxy(CIMultiDict(fields))
    assert fast(proxy) == slow(proxy) == fast(dict(fields)) == slow(dict(fields))


def test_refusals_stay_refusals() -> None:
    both = CIMultiDictProxy(CIMultiDict({"Content-Length": "5", "Transfer-Encoding": "chunked"}))
    with pytest.raises(ResponseHeadersError, match="both Content-Length and Transfer-Encoding"):
        wire_length(both, "http://h/x")
    with pytest.raises(ResponseHeadersError, match="conflicting"):
        wire_length(CIMultiDictProxy(CIMultiDict({"Content-Length": "5, 6"})), "http://h/x")
    assert wire_length(CIMultiDictProxy(CIMultiDict({"Content-Length": "5"})), "u") == 5
