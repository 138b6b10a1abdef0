"""RFC 9111 cache decisions: keys, storability, freshness, lookup and response verdicts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from email.utils import formatdate
from typing import Any

import pytest

from vllm_fetch.core.cache_policy import (
    HEURISTIC_CAP,
    CacheEntry,
    LookupAction,
    ResponseAction,
    cache_key,
    conditional_headers,
    current_age,
    fresh_until,
    freshness_lifetime,
    is_complete,
    is_fresh,
    is_storable,
    kept_headers,
    normalize_url,
    on_lookup,
    on_response,
    parse_cache_control,
    plain_request,
    stale_if_error_allowed,
    vary_values,
)
from vllm_fetch.errors import InvalidURLError

NOW = 1_700_000_000.0
URL = "https://example.com/img.png?X-Amz-Signature=abc&X-Amz-Expires=60"
ETAG = '"v1"'
SHA = "ab" * 32


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def entry(
    headers: dict[str, str] | None = None,
    *,
    received: float = NOW - 100,
    sent: float | None = None,
    **fields: Any,
) -> CacheEntry:
    """A stored entry whose response arrived ``NOW - received`` with Date = arrival time."""
    base = {"Date": http_date(received)}
    base.update(headers or {})
    return CacheEntry(
        url=URL,
        headers=base,
        stored_at=received,
        request_time=received if sent is None else sent,
        response_time=received,
        sha256=fields.pop("sha256", SHA),
        size=fields.pop("size", 1234),
        **fields,
    )


def lookup(e: CacheEntry | None, req: dict[str, str] | None = None, **kw: Any) -> Any:
    kw.setdefault("offline", False)
    kw.setdefault("caller_private_ok", False)
    return on_lookup(e, req or {}, NOW, **kw)


def respond(e: CacheEntry | None, status: int, headers: dict[str, str], **kw: Any) -> Any:
    req = kw.pop("req", {})
    return on_response(e, status, headers, req, NOW, NOW - 0.5, url=URL, **kw)


# --- cache_key ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HTTPS://Example.COM/a", "https://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com/a#frag", "https://example.com/a"),
        ("https://example.com", "https://example.com/"),
        ("https://[::1]:443/a", "https://[::1]/a"),
        # credentials enter a key only as the cache's keyed hash (its scope), never as text
        ("https://u:p@example.com/a", "https://example.com/a"),
    ],
)
def test_cache_key_normalises(a: str, b: str) -> None:
    assert cache_key(a) == cache_key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://example.com/a?sig=1", "https://example.com/a?sig=2"),
        ("https://example.com/a?x=1&y=2", "https://example.com/a?y=2&x=1"),
        ("https://example.com/a?x=%41", "https://example.com/a?x=A"),
        ("https://example.com/A", "https://example.com/a"),
        ("https://example.com/a%2Fb", "https://example.com/a/b"),
        ("http://example.com/a", "https://example.com/a"),
        ("https://example.com:8443/a", "https://example.com/a"),
        ("http://example.com:443/a", "http://example.com/a"),
    ],
)
def test_cache_key_distinguishes(a: str, b: str) -> None:
    assert cache_key(a) != cache_key(b)


def test_normalize_url_keeps_path_and_query_verbatim() -> None:
    url = "HTTPS://Example.COM:443/P%2fa/th;x?b=2&a=%7e#top"
    assert normalize_url(url) == "https://example.com/P%2fa/th;x?b=2&a=%7e"


@pytest.mark.parametrize("url", [
    "https://example.com/a",
    'https://example.com/"quoted"/a?q="x"',
    "https://example.com/caf\u00e9/\u56fe?\u2603=1",
    "https://example.com/\ud83d\ude00",
    "https://u:p@example.com:8443/a?x=%41",
])
@pytest.mark.parametrize("scope", ["", '["allowed.example"],true,[]'])
def test_cache_key_text_is_unchanged(url: str, scope: str) -> None:
    """Keys already on disk stay reachable: the key is the sha256 of this exact JSON text."""
    parts: list[object] = [normalize_url(url), [], *([scope] if scope else [])]
    text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    expected = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    assert cache_key(url, scope=scope) == expected


def test_cache_key_is_sha256_hex_without_secrets() -> None:
    key = cache_key(URL)
    assert len(key) == 64 and int(key, 16) >= 0
    assert "Signature" not in key


@pytest.mark.parametrize(
    ("vary_a", "vary_b", "same"),
    [
        ({"Accept-Encoding": "gzip"}, {"accept-encoding": "gzip"}, True),
        ({"Accept": "a,  b"}, {"accept": "a, b"}, True),
        ({"A": "1", "B": "2"}, {"b": "2", "a": "1"}, True),
        ({"Accept-Encoding": "gzip"}, {"Accept-Encoding": "br"}, False),
        ({"Accept-Encoding": "gzip"}, None, False),
        ({"Accept": ""}, None, False),
    ],
)
def test_cache_key_vary(vary_a: dict[str, str], vary_b: dict[str, str] | None, same: bool) -> None:
    assert (cache_key(URL, vary_a) == cache_key(URL, vary_b)) is same


def test_cache_key_rejects_bad_port() -> None:
    with pytest.raises(InvalidURLError):
        cache_key("https://example.com:99999/")


# --- Cache-Control ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        ("", {}),
        ("Max-Age=60, No-Cache", {"max-age": "60", "no-cache": None}),
        ('private="set-cookie, x-a", max-age=5', {"private": "set-cookie, x-a", "max-age": "5"}),
        ('max-age="30"', {"max-age": "30"}),
        ('x="a\\"b"', {"x": 'a"b'}),
        ("max-age=10, max-age=99", {"max-age": "10"}),
        (" , ,public,,", {"public": None}),
        ("no-store ,  s-maxage = 7", {"no-store": None, "s-maxage": "7"}),
        ('x="unterminated, y', {"x": '"unterminated, y'}),
    ],
)
def test_parse_cache_control(value: str | None, expected: dict[str, str | None]) -> None:
    assert parse_cache_control(value) == expected


# --- storability --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "req", "resp", "expected"),
    [
        (200, {}, {}, (True, False)),
        (200, {}, {"Cache-Control": "max-age=60"}, (True, False)),
        (203, {}, {"Cache-Control": "max-age=60"}, (True, False)),
        (206, {}, {}, (False, False)),
        (404, {}, {"Cache-Control": "max-age=60"}, (True, False)),
        (200, {}, {"Cache-Control": "no-store"}, (False, False)),
        (200, {"Cache-Control": "no-store"}, {}, (False, False)),
        (200, {}, {"Vary": "*"}, (False, False)),
        (200, {"Authorization": "Bearer t"}, {}, (True, True)),
        # stricter than §3.5: credentials keep a response private whatever it says
        (200, {"authorization": "Bearer t"}, {"Cache-Control": "public"}, (True, True)),
        (200, {"Authorization": "Bearer t"}, {"Cache-Control": "s-maxage=5"}, (True, True)),
        (200, {"Authorization": "x"}, {"Cache-Control": "must-revalidate"}, (True, True)),
        (200, {"Proxy-Authorization": "Basic x"}, {"Cache-Control": "public"}, (True, True)),
        (200, {"Authorization": "x"}, {"Cache-Control": "max-age=60"}, (True, True)),
        (200, {"Cookie": "s=1"}, {"Cache-Control": "public"}, (True, True)),
        (200, {"X-Api-Key": "k"}, {}, (True, True)),
        (200, {}, {"Cache-Control": "private, max-age=60"}, (True, True)),
        (200, {"Authorization": "x"}, {"Cache-Control": "no-store"}, (False, True)),
    ],
)
def test_is_storable(
    status: int, req: dict[str, str], resp: dict[str, str], expected: tuple[bool, bool]
) -> None:
    assert is_storable(status, req, resp, shared_ok_for_private=True) == expected


def test_private_not_storable_when_cache_refuses_private() -> None:
    req = {"Authorization": "Bearer t"}
    assert is_storable(200, req, {}, shared_ok_for_private=False) == (False, True)
    assert is_storable(200, {}, {}, shared_ok_for_private=False) == (True, False)


def test_kept_headers_keeps_every_end_to_end_field_lowercased() -> None:
    # RFC 9111 §3.1: everything but hop-by-hop fields and those Connection names
    headers = {"ETag": ETAG, "Set-Cookie": "s=1", "Content-Type": "image/png", "X-Foo": "1",
               "Connection": "close, X-Hop", "X-Hop": "h", "Keep-Alive": "5",
               "Transfer-Encoding": "chunked", "Content-Security-Policy": "default-src 'none'"}
    assert kept_headers(headers) == {"etag": ETAG, "set-cookie": "s=1",
                                     "content-type": "image/png", "x-foo": "1",
                                     "content-security-policy": "default-src 'none'"}


# --- freshness ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "kw", "lifetime"),
    [
        ({"Cache-Control": "max-age=300"}, {}, 300.0),
        ({"Cache-Control": "max-age=300", "Expires": http_date(NOW + 9999)}, {}, 300.0),
        ({"Cache-Control": "max-age=oops"}, {}, 0.0),
        ({"Cache-Control": "s-maxage=50, max-age=300"}, {}, 50.0),
        ({"Cache-Control": "s-maxage=50, max-age=300"}, {"private": True}, 300.0),
        ({"Expires": http_date(NOW + 500)}, {}, 600.0),  # Expires - Date (Date = NOW - 100)
        ({"Expires": http_date(NOW - 500)}, {}, 0.0),
        ({"Expires": "0"}, {}, 0.0),
        # heuristic: 10% of Date - Last-Modified
        ({"Last-Modified": http_date(NOW - 100 - 5000)}, {}, 500.0),
        ({"Last-Modified": http_date(NOW - 100 - 100 * 86400)}, {}, HEURISTIC_CAP),
        ({"Last-Modified": http_date(NOW + 1000)}, {}, 0.0),
        ({"Expires": http_date(NOW), "Last-Modified": http_date(NOW - 10**6)}, {}, 100.0),
        ({}, {}, 0.0),
    ],
)
def test_freshness_lifetime(headers: dict[str, str], kw: dict[str, Any], lifetime: float) -> None:
    assert freshness_lifetime(entry(headers, **kw)) == pytest.approx(lifetime)


def test_freshness_without_date_uses_response_time() -> None:
    e = CacheEntry(
        url=URL,
        headers={"Expires": http_date(NOW + 60)},
        stored_at=NOW,
        request_time=NOW,
        response_time=NOW,
    )
    assert freshness_lifetime(e) == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("headers", "sent", "expected"),
    [
        ({}, None, 100.0),  # resident time only
        ({"Age": "50"}, None, 150.0),  # Age header adds to it
        ({"Age": "50, 70"}, None, 150.0),  # first member of a list
        ({"Age": "-5"}, None, 100.0),  # invalid: ignored
        ({"Age": "10"}, NOW - 103, 113.0),  # response_delay of 3s corrects Age
        ({"Date": http_date(NOW - 130)}, None, 130.0),  # apparent age from Date (30s) + resident
        ({"Date": http_date(NOW)}, None, 100.0),  # Date in the future: apparent age 0
    ],
)
def test_current_age(headers: dict[str, str], sent: float | None, expected: float) -> None:
    assert current_age(entry(headers, sent=sent), NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("headers", "fresh"),
    [
        ({"Cache-Control": "max-age=300"}, True),
        ({"Cache-Control": "max-age=60"}, False),
        ({"Cache-Control": "max-age=300", "Age": "250"}, False),  # Age reduces freshness
        ({"Expires": http_date(NOW + 10)}, True),
        ({"Expires": http_date(NOW - 10)}, False),
        ({"Last-Modified": http_date(NOW - 100 - 2000)}, True),  # heuristic 200s > age 100s
        ({"Last-Modified": http_date(NOW - 100 - 500)}, False),  # heuristic 50s < age 100s
        ({}, False),
    ],
)
def test_is_fresh(headers: dict[str, str], fresh: bool) -> None:
    assert is_fresh(entry(headers), NOW) is fresh


# --- on_lookup ----------------------------------------------------------------------------------

FRESH = {"Cache-Control": "max-age=300", "ETag": ETAG}
STALE_ETAG = {"Cache-Control": "max-age=10", "ETag": ETAG}
LM = http_date(NOW - 10**6)


@pytest.mark.parametrize(
    ("headers", "req", "action", "conditional"),
    [
        (FRESH, {}, LookupAction.HIT, {}),
        ({"Expires": http_date(NOW + 60)}, {}, LookupAction.HIT, {}),
        ({"Last-Modified": http_date(NOW - 100 - 5000)}, {}, LookupAction.HIT, {}),
        (STALE_ETAG, {}, LookupAction.REVALIDATE, {"If-None-Match": ETAG}),
        (
            {"Cache-Control": "max-age=10", "Last-Modified": LM},
            {},
            LookupAction.REVALIDATE,
            {"If-Modified-Since": LM},
        ),
        (
            {"Cache-Control": "max-age=10", "ETag": ETAG, "Last-Modified": LM},
            {},
            LookupAction.REVALIDATE,
            {"If-None-Match": ETAG, "If-Modified-Since": LM},
        ),
        ({"Cache-Control": "max-age=10"}, {}, LookupAction.MISS, {}),  # stale, no validator
        ({"Expires": http_date(NOW - 1), "ETag": ETAG}, {}, LookupAction.REVALIDATE, None),
        (
            {"Cache-Control": "max-age=300", "Age": "250", "ETag": ETAG},
            {},
            LookupAction.REVALIDATE,
            None,
        ),
        # no-cache in the response: revalidate even while fresh
        (
            {"Cache-Control": "no-cache, max-age=300", "ETag": ETAG},
            {},
            LookupAction.REVALIDATE,
            None,
        ),
        ({"Cache-Control": "no-cache, max-age=300"}, {}, LookupAction.MISS, {}),
        # request directives
        (FRESH, {"Cache-Control": "no-cache"}, LookupAction.REVALIDATE, {"If-None-Match": ETAG}),
        (FRESH, {"Cache-Control": "max-age=0"}, LookupAction.REVALIDATE, None),
        (FRESH, {"Cache-Control": "max-age=50"}, LookupAction.REVALIDATE, None),
        (FRESH, {"Cache-Control": "max-age=150"}, LookupAction.HIT, None),
        (FRESH, {"Cache-Control": "min-fresh=250"}, LookupAction.REVALIDATE, None),
        (FRESH, {"Cache-Control": "no-store"}, LookupAction.MISS, {}),
        (STALE_ETAG, {"Cache-Control": "max-stale"}, LookupAction.HIT, None),
        (STALE_ETAG, {"Cache-Control": "max-stale=100"}, LookupAction.HIT, None),
        (STALE_ETAG, {"Cache-Control": "max-stale=50"}, LookupAction.REVALIDATE, None),
        # must-revalidate: no stale serving even when the client accepts it
        (
            {"Cache-Control": "max-age=10, must-revalidate", "ETag": ETAG},
            {"Cache-Control": "max-stale"},
            LookupAction.REVALIDATE,
            None,
        ),
        # ... but a fresh must-revalidate entry is a plain hit
        ({"Cache-Control": "max-age=300, must-revalidate"}, {}, LookupAction.HIT, None),
    ],
)
def test_on_lookup(
    headers: dict[str, str],
    req: dict[str, str],
    action: LookupAction,
    conditional: dict[str, str] | None,
) -> None:
    e = entry(headers)
    decision = lookup(e, req)
    assert decision.action is action
    if conditional is not None:
        assert decision.headers == conditional
    # HIT, REVALIDATE and a MISS for a visible entry all hand the entry on (for stale-if-error).
    assert decision.entry is e


def test_lookup_nothing_stored_is_miss() -> None:
    decision = lookup(None)
    assert decision.action is LookupAction.MISS and decision.entry is None


def test_conditional_headers_empty_without_validators() -> None:
    assert conditional_headers(entry({})) == {}


@pytest.mark.parametrize(
    ("stored", "action", "stale"),
    [
        (entry(FRESH), LookupAction.OFFLINE_HIT, False),
        (entry(STALE_ETAG), LookupAction.OFFLINE_HIT, True),
        (
            entry({"Cache-Control": "no-cache, must-revalidate, max-age=0"}),
            LookupAction.OFFLINE_HIT,
            True,
        ),
        (None, LookupAction.OFFLINE_MISS, False),
        (entry(FRESH, private=True), LookupAction.OFFLINE_MISS, False),
        (entry(FRESH, sha256="", size=-1), LookupAction.OFFLINE_MISS, False),
    ],
)
def test_offline(stored: CacheEntry | None, action: LookupAction, stale: bool) -> None:
    decision = lookup(stored, offline=True)
    assert decision.action is action
    assert decision.stale is stale
    assert decision.entry is (stored if action is LookupAction.OFFLINE_HIT else None)


@pytest.mark.parametrize(
    ("opt_in", "offline", "action"),
    [
        (False, False, LookupAction.MISS),
        (True, False, LookupAction.HIT),
        (False, True, LookupAction.OFFLINE_MISS),
        (True, True, LookupAction.OFFLINE_HIT),
    ],
)
def test_private_entry_served_only_when_opted_in(
    opt_in: bool, offline: bool, action: LookupAction
) -> None:
    decision = lookup(entry(FRESH, private=True), caller_private_ok=opt_in, offline=offline)
    assert decision.action is action
    if action is LookupAction.MISS:
        assert decision.entry is None  # never handed to on_response either (no stale serving)


@pytest.mark.parametrize(
    ("req", "action"),
    [
        ({"Accept-Encoding": "gzip"}, LookupAction.HIT),
        ({"accept-encoding": " gzip "}, LookupAction.HIT),
        ({"Accept-Encoding": "br"}, LookupAction.MISS),
        ({}, LookupAction.MISS),
    ],
)
def test_lookup_respects_vary(req: dict[str, str], action: LookupAction) -> None:
    e = entry({**FRESH, "Vary": "Accept-Encoding"}, vary={"accept-encoding": "gzip"})
    assert lookup(e, req).action is action


def test_template_entry_is_never_served() -> None:
    assert lookup(entry(FRESH, sha256="", size=-1)).action is LookupAction.MISS


# --- on_response --------------------------------------------------------------------------------


def test_200_stores_template() -> None:
    resp = {
        "ETag": ETAG,
        "Cache-Control": "max-age=60",
        "Content-Type": "image/png",
        "Set-Cookie": "s=1",
        "Vary": "Accept-Encoding",
    }
    decision = respond(None, 200, resp, req={"Accept-Encoding": "identity"})
    assert decision.action is ResponseAction.STORE and not decision.invalidate
    new = decision.entry
    assert new.url == URL and new.status == 200
    assert new.sha256 == "" and new.size == -1 and not new.has_body
    assert new.headers == {
        "etag": ETAG,
        "cache-control": "max-age=60",
        "content-type": "image/png",
        "set-cookie": "s=1",
        "vary": "Accept-Encoding",
    }
    assert new.fields == tuple(resp.items())  # served as received, names as sent
    assert new.vary == {"accept-encoding": "identity"}
    assert (new.stored_at, new.response_time, new.request_time) == (NOW, NOW, NOW - 0.5)
    assert not new.private
    filled = new.with_body(SHA, 10)
    assert filled.has_body and filled.etag == ETAG


def test_200_with_changed_etag_replaces() -> None:
    old = entry(STALE_ETAG)
    decision = respond(old, 200, {"ETag": '"v2"', "Cache-Control": "max-age=60"})
    assert decision.action is ResponseAction.STORE
    assert decision.entry.etag == '"v2"' and decision.entry.sha256 == ""


@pytest.mark.parametrize(
    ("resp", "req", "kw"),
    [
        ({"Cache-Control": "no-store"}, {}, {}),
        ({}, {"Cache-Control": "no-store"}, {}),
        ({"Vary": "*"}, {}, {}),
        ({"Cache-Control": "private"}, {}, {"store_private": False}),
    ],
)
def test_200_not_storable_passes_and_invalidates(
    resp: dict[str, str], req: dict[str, str], kw: dict[str, Any]
) -> None:
    assert respond(None, 200, resp, req=req, **kw).action is ResponseAction.PASS
    decision = respond(entry(FRESH), 200, resp, req=req, **kw)
    assert decision.action is ResponseAction.PASS and decision.invalidate


def test_200_to_authorized_request_is_private() -> None:
    decision = respond(None, 200, {"ETag": ETAG}, req={"Authorization": "Bearer t"})
    assert decision.action is ResponseAction.STORE and decision.entry.private


def test_304_refreshes_metadata_and_keeps_body() -> None:
    old = entry(
        {
            "Cache-Control": "max-age=10",
            "ETag": ETAG,
            "Age": "5",
            "Content-Length": "1234",
            "Content-Type": "image/png",
        }
    )
    resp = {
        "ETag": ETAG,
        "Cache-Control": "max-age=600",
        "Date": http_date(NOW),
        "Content-Length": "0",
        "X-Other": "dropped",
    }
    decision = respond(old, 304, resp)
    assert decision.action is ResponseAction.REFRESH and not decision.invalidate
    new = decision.entry
    assert (new.sha256, new.size, new.url) == (old.sha256, old.size, old.url)
    assert new.headers == {
        "cache-control": "max-age=600",
        "etag": ETAG,
        "date": http_date(NOW),
        "content-length": "1234",  # §3.2: never rewritten by a 304
        "content-type": "image/png",
        "x-other": "dropped",  # §4.3.4: every field of the 304 updates the stored ones
    }
    assert (new.stored_at, new.response_time, new.request_time) == (NOW, NOW, NOW - 0.5)
    assert is_fresh(new, NOW + 500)
    assert lookup(new).action is LookupAction.HIT


def test_304_without_date_does_not_keep_old_date() -> None:
    old = entry({"Cache-Control": "max-age=60", "ETag": ETAG}, received=NOW - 10_000)
    new = respond(old, 304, {"ETag": ETAG}).entry
    assert "date" not in new.headers
    assert current_age(new, NOW) == pytest.approx(0.5)  # only the response delay
    assert is_fresh(new, NOW)


@pytest.mark.parametrize(
    ("stored", "resp", "action"),
    [
        ({"ETag": ETAG}, {"ETag": 'W/"v1"'}, ResponseAction.REFRESH),  # weak comparison
        ({"ETag": ETAG}, {}, ResponseAction.REFRESH),
        ({"ETag": ETAG}, {"ETag": '"v2"'}, ResponseAction.REFETCH),
        ({"Last-Modified": LM}, {"ETag": '"v2"'}, ResponseAction.REFETCH),
        ({"Last-Modified": LM}, {"Last-Modified": LM}, ResponseAction.REFRESH),
        ({"Last-Modified": LM}, {"Last-Modified": http_date(NOW)}, ResponseAction.REFETCH),
    ],
)
def test_304_selects_by_validator(
    stored: dict[str, str], resp: dict[str, str], action: ResponseAction
) -> None:
    decision = respond(entry(stored), 304, resp)
    assert decision.action is action
    assert decision.invalidate is (action is ResponseAction.REFETCH)


def test_304_with_nothing_stored_refetches() -> None:
    decision = respond(None, 304, {"ETag": ETAG})
    assert decision.action is ResponseAction.REFETCH and decision.entry is None


def test_304_that_turns_no_store_serves_once_then_invalidates() -> None:
    decision = respond(entry(STALE_ETAG), 304, {"ETag": ETAG, "Cache-Control": "no-store"})
    assert decision.action is ResponseAction.REFRESH and decision.invalidate


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_with_entry_serves_stale(status: int) -> None:
    e = entry(STALE_ETAG)
    decision = respond(e, status, {})
    assert decision.action is ResponseAction.SERVE_STALE and decision.entry is e
    assert not decision.invalidate


@pytest.mark.parametrize(
    ("stored", "status", "action", "invalidate"),
    [
        (None, 503, ResponseAction.PASS, False),
        (entry(STALE_ETAG), 501, ResponseAction.PASS, False),
        (entry(STALE_ETAG), 429, ResponseAction.PASS, False),
        (entry(STALE_ETAG), 403, ResponseAction.PASS, False),
        (entry(STALE_ETAG), 206, ResponseAction.PASS, False),
        (entry(STALE_ETAG), 404, ResponseAction.PASS, True),
        (entry(STALE_ETAG), 410, ResponseAction.PASS, True),
        (None, 404, ResponseAction.PASS, False),
        (entry({"Cache-Control": "max-age=10, must-revalidate"}), 503, ResponseAction.PASS, False),
    ],
)
def test_other_statuses(
    stored: CacheEntry | None, status: int, action: ResponseAction, invalidate: bool
) -> None:
    decision = respond(stored, status, {})
    assert decision.action is action
    assert decision.invalidate is invalidate


@pytest.mark.parametrize(
    ("cc", "kw", "allowed"),
    [
        ("max-age=10", {}, True),
        ("", {}, True),
        ("max-age=10, must-revalidate", {}, False),
        ("no-cache", {}, False),
        ("no-store", {}, False),
        ("max-age=10, proxy-revalidate", {}, False),
        ("max-age=10, proxy-revalidate", {"private": True}, True),
        ("s-maxage=10", {}, False),
        ("max-age=10, stale-if-error=100", {}, True),  # stale by 90s (age 100 - lifetime 10)
        ("max-age=10, stale-if-error=60", {}, False),
    ],
)
def test_stale_if_error_allowed(cc: str, kw: dict[str, Any], allowed: bool) -> None:
    assert stale_if_error_allowed(entry({"Cache-Control": cc}, **kw), NOW) is allowed


def test_stale_if_error_bound_ignored_without_now() -> None:
    assert stale_if_error_allowed(entry({"Cache-Control": "max-age=10, stale-if-error=1"}))


# --- vary_values, is_complete -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vary", "req", "expected"),
    [
        (None, {"Accept": "x"}, {}),
        (
            "Accept-Encoding, Accept",
            {"accept-encoding": "gzip"},
            {"accept-encoding": "gzip", "accept": ""},
        ),
        ("*", {}, None),
        ("Accept, *", {}, None),
    ],
)
def test_vary_values(
    vary: str | None, req: dict[str, str], expected: dict[str, str] | None
) -> None:
    resp = {} if vary is None else {"Vary": vary}
    assert vary_values(resp, req) == expected


@pytest.mark.parametrize(
    ("size", "length", "received", "complete"),
    [
        (None, None, 10, True),
        (None, "10", 10, True),
        (None, " 10 ", 10, True),
        (None, "10", 5, False),
        (None, "10", 11, False),
        (10, None, 10, True),
        (10, None, 9, False),
        (10, "10", 10, True),
        (10, "12", 10, False),
        (None, "ten", 10, False),
        (None, "10, 10", 10, False),
        (None, "-1", 0, False),
        (None, None, -1, False),
        (0, "0", 0, True),
    ],
)
def test_is_complete(size: int | None, length: str | None, received: int, complete: bool) -> None:
    assert is_complete(size, length, received) is complete


# --- serialisation ------------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip() -> None:
    e = entry(
        {"ETag": ETAG, "Content-Type": "image/png"},
        vary={"Accept-Encoding": "gzip"},
        private=True,
    )
    data = json.loads(json.dumps(e.to_dict()))
    assert CacheEntry.from_dict(data) == e
    assert data["headers"]["etag"] == ETAG and data["vary"] == {"accept-encoding": "gzip"}


def test_to_dict_is_what_dataclasses_asdict_gives() -> None:
    e = CacheEntry(url="https://example.com/a", headers={"ETag": '"1"'}, stored_at=1.0,
                   request_time=2.0, response_time=3.0, status=203, sha256="ab" * 32, size=5,
                   vary={"Accept": "x"}, private=True)
    record = e.to_dict()
    assert record == dataclasses.asdict(e)
    record["headers"]["etag"] = "changed"
    assert e.headers == {"etag": '"1"'}  # a copy, never the entry's own dict


def test_from_dict_defaults_and_int_times() -> None:
    data = {"url": URL, "headers": {}, "stored_at": 1, "request_time": 1, "response_time": 2}
    e = CacheEntry.from_dict(data)
    assert (e.status, e.sha256, e.size, e.vary, e.private) == (200, "", -1, {}, False)
    assert isinstance(e.stored_at, float)


@pytest.mark.parametrize(
    "patch",
    [
        {"url": None},
        {"url": 5},
        {"headers": ["x"]},
        {"headers": {"etag": 1}},
        {"stored_at": "yesterday"},
        {"size": True},
        {"size": 1.5},
        {"private": 1},
        {"vary": {"a": None}},
    ],
)
def test_from_dict_rejects_malformed(patch: dict[str, Any]) -> None:
    data = {**entry(FRESH).to_dict(), **patch}
    with pytest.raises(ValueError):
        CacheEntry.from_dict(data)


@pytest.mark.parametrize(
    ("req", "action"),
    [
        ({}, LookupAction.HIT),
        ({"Cache-Control": "max-age=0"}, LookupAction.REVALIDATE),
        ({"Cache-Control": "no-cache"}, LookupAction.REVALIDATE),
    ],
)
def test_request_max_age_zero_revalidates_even_at_age_zero(
    req: dict[str, str], action: LookupAction
) -> None:
    e = entry(FRESH, received=NOW)
    assert current_age(e, NOW) == 0.0
    assert lookup(e, req).action is action


@pytest.mark.parametrize("headers", [
    {"Cache-Control": "max-age=600"},
    {"Cache-Control": "max-age=600", "Age": "250"},
    {"Expires": http_date(NOW + 50)},
    {"Cache-Control": "max-age=60"},  # stale already
    {"Cache-Control": "max-age=0"},
    {},
])
def test_fresh_until_is_where_a_plain_lookup_turns_stale(headers: dict[str, str]) -> None:
    """The memory tier's remembered verdict: a plain request finds the entry fresh exactly
    while ``now < fresh_until`` (same answer as ``on_lookup`` at every instant)."""
    e = entry(headers)
    until = fresh_until(e)
    for now in (NOW - 200, NOW, NOW + 49, NOW + 51, NOW + 400, NOW + 10_000):
        verdict = on_lookup(e, {}, now, offline=False, caller_private_ok=False)
        fresh = verdict.action is LookupAction.HIT and not verdict.background
        assert fresh == (now < until), (headers, now)


def test_plain_requests_carry_no_directive_and_no_range() -> None:
    assert plain_request({}) and plain_request({"Accept": "image/*", "User-Agent": "x"})
    for name in ("Cache-Control", "cache-control", "Pragma", "Range", "If-Range"):
        assert not plain_request({"Accept": "*/*", name: "x"})
