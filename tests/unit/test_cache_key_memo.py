"""The cache key's per-origin shortcut answers exactly as the parse of the whole URL does.

``normalize_url`` (what ``cache_key`` hashes) normalises ``scheme://authority`` once per
origin and cuts the path and query from the URL itself; for every URL below (valid, hostile
and malformed spellings, crossed with paths, queries and fragments) it must return, or refuse
with, what the full parse gives.
"""

from __future__ import annotations

import itertools

import pytest

from tests.unit.test_url_origin_memo import ORIGINS, TAILS, outcome
from vllm_fetch.core import cache_policy
from vllm_fetch.core.cache_policy import cache_key, normalize_url

MORE_ORIGINS = ["http://", "http:///", "https://h:443", "http://h:80", "http://[::1]",
                "http://[::ffff:127.0.0.1]:8080", "http://@h", "http://:80", "HTTPS://U@H:0"]
MORE_TAILS = ["?", "#", "?#", "/?", "/p?", "/p?#x", "/p#x?y", "?a?b", "/a#b#c", "///"]


@pytest.mark.parametrize("url", [o + t for o, t in itertools.product(
    ORIGINS + MORE_ORIGINS, TAILS + MORE_TAILS)])
def test_the_per_origin_key_matches_the_full_parse(url: str) -> None:
    full = cache_policy._normalized
    assert outcome(normalize_url.__wrapped__, url) == outcome(full, url)  # type: ignore[attr-defined]
    assert outcome(normalize_url, url) == outcome(full, url)


def test_keys_of_one_resource_spelled_differently_are_one() -> None:
    spellings = ["http://Example.COM:80/a?b#c", "HTTP://user:pw@example.com/a?b",
                 "http://example.com/a?b#other"]
    assert len({cache_key(u) for u in spellings}) == 1
    assert cache_key("http://example.com/a?b") != cache_key("http://example.com/a?c")
    assert cache_key("http://example.com/a") == cache_key("http://example.com/a?")
    assert normalize_url("http://example.com") == "http://example.com/"
