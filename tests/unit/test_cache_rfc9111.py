"""RFC 9111 rules beyond the basics (issue 15): statuses, Age, Expires, Range, directives."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest
from multidict import CIMultiDict

from vllm_fetch.core.cache_policy import (
    CacheEntry,
    LookupAction,
    ResponseAction,
    age_header,
    current_age,
    freshness_lifetime,
    on_lookup,
    on_response,
    stale_if_error_allowed,
)

NOW = 1_700_000_000.0
URL = "https://example.com/a"
SHA = "ab" * 32


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def entry(headers: dict[str, str] | None = None, *, received: float = NOW - 100,
          **kw: Any) -> CacheEntry:
    base = {"date": http_date(received), **{k.lower(): v for k, v in (headers or {}).items()}}
    kw.setdefault("sha256", SHA)
    kw.setdefault("size", 100)
    return CacheEntry(url=URL, headers=base, stored_at=received, request_time=received,
                      response_time=received, **kw)


def lookup(e: CacheEntry | None, req: dict[str, str] | None = None, **kw: Any) -> Any:
    kw.setdefault("offline", False)
    kw.setdefault("caller_private_ok", False)
    return on_lookup(e, req or {}, NOW, **kw)


def respond(e: CacheEntry | None, status: int, headers: Any, **kw: Any) -> Any:
    return on_response(e, status, headers, kw.pop("req", {}), NOW, NOW - 0.5, url=URL, **kw)


# --- §3: which statuses are stored ----------------------------------------------------------


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
def test_heuristically_cacheable_statuses_are_stored_with_explicit_freshness(status: int) -> None:
    decision = respond(None, status, {"Cache-Control": "max-age=60"})
    assert decision.action is ResponseAction.STORE
    assert decision.entry.status == status


@pytest.mark.parametrize(
    ("status", "headers", "stored"),
    [
        # RFC 9110 §15.1 heuristic list: Last-Modified is enough for a heuristic lifetime
        (404, {"Last-Modified": http_date(NOW - 10_000)}, True),
        (410, {"Last-Modified": http_date(NOW - 10_000)}, True),
        (404, {}, False),  # an error that can never be fresh is not kept
        # other statuses only with explicit freshness (§3)
        (403, {}, False),
        (403, {"Cache-Control": "max-age=60"}, True),
        (400, {"Expires": http_date(NOW + 60)}, True),
        (302, {"Cache-Control": "max-age=60"}, True),
        (307, {"Cache-Control": "public"}, True),
        # a redirect without freshness is kept for offline replay, but is never fresh
        (302, {}, True),
        (206, {"Cache-Control": "max-age=60"}, False),  # whole bodies only
        (299, {"Cache-Control": "max-age=60"}, False),  # a status it does not understand
        (404, {"Cache-Control": "max-age=60, no-store"}, False),
    ],
)
def test_storable_statuses(status: int, headers: dict[str, str], stored: bool) -> None:
    action = respond(None, status, headers).action
    assert (action is ResponseAction.STORE) is stored


@pytest.mark.parametrize(
    ("status", "headers", "lifetime"),
    [
        (404, {"Last-Modified": http_date(NOW - 100 - 5000)}, 500.0),  # §4.2.2 heuristic
        (302, {"Last-Modified": http_date(NOW - 100 - 5000)}, 0.0),  # no heuristic for 302
        (302, {"Last-Modified": http_date(NOW - 100 - 5000), "Cache-Control": "public"}, 500.0),
        (302, {"Cache-Control": "max-age=60"}, 60.0),
    ],
)
def test_heuristic_freshness_only_for_listed_statuses(status: int, headers: dict[str, str],
                                                      lifetime: float) -> None:
    assert freshness_lifetime(entry(headers, status=status)) == pytest.approx(lifetime)


def test_a_stored_404_is_a_hit_while_fresh() -> None:
    stored = entry({"Cache-Control": "max-age=600"}, status=404)
    assert lookup(stored).action is LookupAction.HIT


# --- §3.1: every end-to-end line stored, §4.3.4: updated from a 304 ----------------------------


def test_every_end_to_end_line_is_stored_as_received() -> None:
    headers = CIMultiDict([("Cache-Control", "max-age=60"), ("Set-Cookie", "a=1"),
                           ("Set-Cookie", "b=2"), ("Content-Location", "/x"),
                           ("Connection", "X-Hop"), ("X-Hop", "1"), ("Age", "30")])
    new = respond(None, 200, headers).entry
    assert new.fields == (("Cache-Control", "max-age=60"), ("Set-Cookie", "a=1"),
                          ("Set-Cookie", "b=2"), ("Content-Location", "/x"))
    assert new.headers["set-cookie"] == "a=1, b=2"
    assert new.headers["age"] == "30"  # kept for the age arithmetic, not served as is


def test_a_304_updates_the_served_lines() -> None:
    old = CacheEntry(url=URL, headers={"cache-control": "max-age=0", "etag": '"1"',
                                       "x-a": "old", "content-length": "100"},
                     fields=(("Cache-Control", "max-age=0"), ("ETag", '"1"'), ("X-A", "old"),
                             ("Content-Length", "100"), ("Date", http_date(NOW - 100))),
                     stored_at=NOW - 100, request_time=NOW - 100, response_time=NOW - 100,
                     sha256=SHA, size=100)
    resp = CIMultiDict([("ETag", '"1"'), ("Cache-Control", "max-age=60"), ("X-A", "new"),
                        ("X-A", "newer"), ("Content-Length", "0"), ("X-New", "n")])
    decision = respond(old, 304, resp)
    assert decision.action is ResponseAction.REFRESH
    assert decision.entry.fields == (
        ("Content-Length", "100"),  # §3.2: never rewritten by a 304
        ("ETag", '"1"'), ("Cache-Control", "max-age=60"), ("X-A", "new"), ("X-A", "newer"),
        ("X-New", "n"))
    assert decision.entry.headers["x-a"] == "new, newer"


def test_vary_lines_are_combined_so_a_star_on_a_second_line_counts() -> None:
    # RFC 9110 §5.3: aiohttp hands over "Vary: " and "Vary: *" as two lines
    headers = CIMultiDict([("Cache-Control", "max-age=60"), ("Vary", ""), ("Vary", "*")])
    assert respond(None, 200, headers).action is ResponseAction.PASS


# --- §5.1 / §4.2.3: Age ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "received", "age"),
    [
        ({}, NOW - 100, 100.0),
        ({"Age": "50"}, NOW - 100, 150.0),  # the stored Age adds to the time resident here
        ({"Age": "abc"}, NOW - 100, 100.0),
    ],
)
def test_current_age(headers: dict[str, str], received: float, age: float) -> None:
    assert current_age(entry(headers, received=received), NOW) == pytest.approx(age)


@pytest.mark.parametrize(("age", "text"), [(0.0, "0"), (99.9, "99"), (2.0**40, str(2**31))])
def test_age_header_is_whole_seconds(age: float, text: str) -> None:
    assert age_header(age) == text


def test_a_hit_carries_the_current_age() -> None:
    decision = lookup(entry({"Cache-Control": "max-age=600", "Age": "20"}))
    assert decision.action is LookupAction.HIT
    assert decision.age == pytest.approx(120.0)


# --- §5.3: an invalid Expires is stale at once -------------------------------------------------


@pytest.mark.parametrize(
    "expires",
    [
        "Sun, 06 Nov 2094 08:49:37 UTC",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun 06 Nov 2094 08:49:37 GMT",
        "Sun,  06 Nov 2094 08:49:37 GMT",
        "Sun, 06 Nov 2094 8:49:37 GMT",
        "Sun, 06-Nov-2094 08:49:37 GMT",
        f"{http_date(NOW + 3600)}, {http_date(NOW + 3600)}",  # two Expires lines, combined
        "0",
    ],
)
def test_invalid_expires_is_already_expired(expires: str) -> None:
    stored = entry({"Expires": expires, "ETag": '"1"'})
    assert freshness_lifetime(stored) == 0.0
    assert lookup(stored).action is LookupAction.REVALIDATE


def test_a_valid_expires_is_fresh() -> None:
    assert lookup(entry({"Expires": http_date(NOW + 3600)})).action is LookupAction.HIT


# --- §5.2.1: request directives; RFC 5861 ------------------------------------------------------

FRESH = {"Cache-Control": "max-age=600", "ETag": '"1"'}  # age 100 of 600
STALE = {"Cache-Control": "max-age=60", "ETag": '"1"'}  # stale by 40 s


@pytest.mark.parametrize(
    ("stored", "request_cc", "action"),
    [
        (FRESH, "only-if-cached", LookupAction.HIT),
        (STALE, "only-if-cached", LookupAction.OFFLINE_MISS),  # §5.2.1.7: a 504
        (STALE, "only-if-cached, max-stale=100", LookupAction.HIT),
        (None, "only-if-cached", LookupAction.OFFLINE_MISS),
        (STALE, "max-stale", LookupAction.HIT),  # §5.2.1.2: any staleness
        (STALE, "max-stale=50", LookupAction.HIT),
        (STALE, "max-stale=10", LookupAction.REVALIDATE),
        ({**STALE, "Cache-Control": "max-age=60, must-revalidate"}, "max-stale",
         LookupAction.REVALIDATE),
        (FRESH, "min-fresh=400", LookupAction.HIT),  # §5.2.1.3: 500 s left
        (FRESH, "min-fresh=600", LookupAction.REVALIDATE),
        (FRESH, "no-cache", LookupAction.REVALIDATE),  # §5.2.1.4
        (FRESH, "max-age=50", LookupAction.REVALIDATE),  # §5.2.1.1: older than 50 s
        (FRESH, "no-store", LookupAction.MISS),
    ],
)
def test_request_directives(stored: dict[str, str] | None, request_cc: str,
                            action: LookupAction) -> None:
    assert lookup(entry(stored) if stored else None,
                  {"Cache-Control": request_cc}).action is action


@pytest.mark.parametrize(
    ("response_cc", "request_cc", "background"),
    [
        ("max-age=60, stale-while-revalidate=100", "", True),  # stale by 40 s, window 100
        ("max-age=60, stale-while-revalidate=30", "", False),  # past the window
        ("max-age=60, stale-while-revalidate=100, must-revalidate", "", False),
        ("max-age=60, stale-while-revalidate=100", "no-cache", False),
        ("max-age=60, stale-while-revalidate=100", "max-age=10", False),
        ("max-age=60, stale-while-revalidate=100, no-cache", "", False),
        ("s-maxage=60, stale-while-revalidate=100", "", False),  # s-maxage: must revalidate
    ],
)
def test_stale_while_revalidate(response_cc: str, request_cc: str, background: bool) -> None:
    decision = lookup(entry({"Cache-Control": response_cc, "ETag": '"1"'}),
                      {"Cache-Control": request_cc} if request_cc else {})
    if background:  # RFC 5861 §3: served now, revalidated in the background
        assert decision.action is LookupAction.HIT and decision.background and decision.stale
        assert decision.headers == {"If-None-Match": '"1"'}
    else:
        assert decision.action is LookupAction.REVALIDATE and not decision.background


@pytest.mark.parametrize(
    ("response_cc", "request_cc", "allowed"),
    [
        ("max-age=60, stale-if-error=100", None, True),  # stale by 40 s
        ("max-age=60, stale-if-error=10", None, False),
        ("max-age=60", "stale-if-error=10", False),  # RFC 5861 §4: the request bounds it too
        ("max-age=60", "stale-if-error=100", True),
        ("max-age=60, stale-if-error=600", "stale-if-error=10", False),  # the smaller bound
        ("max-age=60, stale-if-error=10", "stale-if-error=600", False),
        ("max-age=60", None, True),  # §4.2.4: allowed when nothing forbids it
        ("max-age=60, must-revalidate, stale-if-error=100", None, False),
    ],
)
def test_stale_if_error(response_cc: str, request_cc: str | None, allowed: bool) -> None:
    stored = entry({"Cache-Control": response_cc})
    req = {"Cache-Control": request_cc} if request_cc else {}
    assert stale_if_error_allowed(stored, NOW, req) is allowed
    action = respond(stored, 503, {}, req=req).action
    assert (action is ResponseAction.SERVE_STALE) is allowed


# --- §3.4 / RFC 9110 §14: Range from the stored full response ----------------------------------


@pytest.mark.parametrize(
    ("stored", "req", "action", "byte_range"),
    [
        (FRESH, {"Range": "bytes=0-7"}, LookupAction.HIT, (0, 7)),
        (FRESH, {"Range": "bytes=-10"}, LookupAction.HIT, (90, 99)),
        (FRESH, {"Range": "bytes=0-7", "If-Range": '"1"'}, LookupAction.HIT, (0, 7)),
        # If-Range fails: the whole stored response (RFC 9110 §13.1.5)
        (FRESH, {"Range": "bytes=0-7", "If-Range": '"2"'}, LookupAction.HIT, None),
        # what it cannot answer goes to the origin, and is not stored
        (FRESH, {"Range": "bytes=0-1,4-5"}, LookupAction.BYPASS, None),
        (FRESH, {"Range": "bytes=100-"}, LookupAction.BYPASS, None),
        (STALE, {"Range": "bytes=0-7"}, LookupAction.BYPASS, None),
        (None, {"Range": "bytes=0-7"}, LookupAction.BYPASS, None),
    ],
)
def test_range_lookups(stored: dict[str, str] | None, req: dict[str, str],
                       action: LookupAction, byte_range: tuple[int, int] | None) -> None:
    decision = lookup(entry(stored) if stored else None, req)
    assert decision.action is action
    got = decision.byte_range
    assert (None if got is None else (got.first, got.last)) == byte_range


def test_range_of_a_stored_error_goes_to_the_origin() -> None:
    stored = entry(FRESH, status=404)
    assert lookup(stored, {"Range": "bytes=0-7"}).action is LookupAction.BYPASS


def test_offline_range_is_answered_from_the_stored_body() -> None:
    decision = lookup(entry(STALE), {"Range": "bytes=2-3"}, offline=True)
    assert decision.action is LookupAction.OFFLINE_HIT
    assert (decision.byte_range.first, decision.byte_range.last) == (2, 3)


# --- the shared cache and s-maxage (§5.2.2.10) --------------------------------------------------


@pytest.mark.parametrize(
    ("cc", "private", "lifetime"),
    [
        ("max-age=10, s-maxage=600", False, 600.0),  # a shared cache uses s-maxage
        ("max-age=10, s-maxage=600", True, 10.0),  # a private entry (allow_private) does not
    ],
)
def test_s_maxage_applies_to_the_shared_cache(cc: str, private: bool, lifetime: float) -> None:
    assert freshness_lifetime(entry({"Cache-Control": cc}, private=private)) == lifetime
