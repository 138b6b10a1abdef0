"""The per-origin shortcuts of the URL checks answer exactly as the per-URL parse does.

``checked_host`` and ``redact_url`` remember their answer per ``scheme://authority`` instead of
parsing every URL again; for each URL below (valid, hostile and malformed spellings, crossed
with paths, queries and fragments) both must return, or refuse with, what the full parse of
that URL gives.
"""

from __future__ import annotations

import itertools

import pytest

from vllm_fetch.core import address_policy, urls
from vllm_fetch.core.address_policy import URLPolicy, checked_host
from vllm_fetch.core.urls import origin_prefix, redact_url
from vllm_fetch.errors import FetchError, InvalidURLError

ORIGINS = [
    "http://example.com", "https://Example.COM", "HTTP://example.com:8080", "http://127.0.0.1",
    "http://[::1]:80", "http://[fe80::1%25eth0]", "http://example.com.", "http://\uff45\uff58ample.com",
    "http://user:pw@example.com", "http://a@b@example.com", "http://exa%41mple.com",
    "http://example.com:99999", "http://example.com:x", "http://[::1", "http://", "ftp://h",
    "http:/example.com", "http:example.com", "ht:tp://example.com", "1http://example.com",
    "http://example.com:080", "http://alice:TOP", "http://a:b://c", "http://ex ample.com",
    "http://ex\tample.com", "http://localhost", "https://xn--nxasmq6b.example",
]
TAILS = ["", "/", "/obj/1", "//x", "/a b", "/ünï", "/p\tq", "/p\n", "?q=1", "#f", "/p?q#f",
         "/p@q", "?@x", "SECRET@host/p", "/%2F..", "\\x"]


def outcome(fn: object, url: str) -> object:
    assert callable(fn)
    try:
        return fn(url)
    except FetchError as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize("url", [o + t for o, t in itertools.product(ORIGINS, TAILS)])
def test_per_origin_answers_match_the_full_parse(url: str) -> None:
    full_host = address_policy._checked_host.__wrapped__  # type: ignore[attr-defined]
    full_redact = urls._redact.__wrapped__  # type: ignore[attr-defined]
    assert outcome(checked_host, url) == outcome(full_host, url)
    assert redact_url(url) == full_redact(url)


def test_origin_prefix_ends_where_the_path_starts() -> None:
    assert origin_prefix("https://h:1/a/b?c#d") == "https://h:1"
    assert origin_prefix("https://h?x") == "https://h"
    assert origin_prefix("https://h") == "https://h"
    assert origin_prefix("h/a") is None


def test_a_refusal_names_the_url_it_refused() -> None:
    """An origin remembered as valid never vouches for a URL the character check refuses, and
    a refused URL's error is its own (path shown redacted), not its origin's."""
    policy = URLPolicy.build(None, False)
    assert policy.check_url("http://example.com/ok") == "http://example.com/ok"
    with pytest.raises(InvalidURLError, match=r"whitespace.*example\.com/a"):
        policy.check_url("http://example.com/a\r\nHost: evil")
    with pytest.raises(InvalidURLError, match="bad port"):
        policy.check_url("http://example.com:x/path")
