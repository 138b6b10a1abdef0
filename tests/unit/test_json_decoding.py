"""``async_get_json``'s decisions, as aiohttp's ``ClientResponse.json()`` makes them (no I/O)."""

from __future__ import annotations

import json

import pytest

from vllm_fetch.core.responses import decode_json_as_aiohttp, unexpected_json_type


@pytest.mark.parametrize("content_type", [
    "application/json", "Application/JSON; charset=utf-8", "application/problem+json",
    "application/vnd.api+json", "application/json-patch+json",
])
def test_json_types_aiohttp_accepts(content_type: str) -> None:
    assert unexpected_json_type({"content-type": content_type}) is None


@pytest.mark.parametrize("content_type", ["text/html", "text/json", "application/xml", ""])
def test_other_types_are_named_lowercased(content_type: str) -> None:
    assert unexpected_json_type({"Content-Type": content_type.upper()}) == content_type


def test_a_missing_content_type_is_not_json() -> None:
    assert unexpected_json_type({}) == ""


@pytest.mark.parametrize("body", [b"", b"  \r\n\t"])
def test_an_empty_body_is_none(body: bytes) -> None:
    assert decode_json_as_aiohttp(body, {"Content-Type": "application/json"}) is None


def test_the_charset_decides_the_text() -> None:
    body = '{"name": "café"}'
    assert decode_json_as_aiohttp(body.encode("utf-16"),
                                  {"Content-Type": "application/json; charset=utf-16"}) \
        == {"name": "café"}
    assert decode_json_as_aiohttp(body.encode(), {}) == {"name": "café"}  # UTF-8 by default
    with pytest.raises(UnicodeDecodeError):  # strict, as aiohttp decodes
        decode_json_as_aiohttp(body.encode("latin-1"), {"Content-Type": "application/json"})


def test_an_unknown_charset_falls_back_to_utf8() -> None:
    assert decode_json_as_aiohttp(b"[1]", {"Content-Type": "application/json; charset=nope"}) \
        == [1]


def test_broken_json_is_a_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        decode_json_as_aiohttp(b"{", {"Content-Type": "application/json"})
