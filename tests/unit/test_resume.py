"""Resume planning: If-Range validators, Content-Range parsing, and verdicts on 206/200/416."""

from __future__ import annotations

import json

import pytest

from vllm_fetch.core.body import header as header_value
from vllm_fetch.core.partial_names import (
    STALE_PARTIAL_AGE,
    partial_name,
    should_discard_stale,
    sidecar_name,
)
from vllm_fetch.core.resume import (
    PartialState,
    ResumeAction,
    is_strong_etag,
    on_response,
    parse_content_range,
    parse_unsatisfied_range,
    plan_request,
    validator_for,
)

URL = "https://example.com/model.safetensors"
ETAG = '"abc123"'
DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


def state(
    offset: int = 100,
    etag: str | None = ETAG,
    last_modified: str | None = DATE,
    total: int | None = 1000,
) -> PartialState:
    return PartialState(offset=offset, etag=etag, last_modified=last_modified, total=total, url=URL)


# --- PartialState ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [state(), state(etag=None, last_modified=None, total=None), state(offset=0, etag='W/"x"')],
)
def test_partial_state_json_round_trip(partial: PartialState) -> None:
    assert PartialState.from_dict(json.loads(json.dumps(partial.to_dict()))) == partial


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"offset": 1},
        {"url": URL},
        {"offset": "1", "url": URL},
        {"offset": True, "url": URL},
        {"offset": -1, "url": URL},
        {"offset": 10, "url": URL, "total": 5},
        {"offset": 1, "url": URL, "etag": 5},
        {"offset": 1, "url": URL, "total": 1.5},
        {"offset": 1, "url": 7},
    ],
)
def test_partial_state_from_corrupt_sidecar_raises(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PartialState.from_dict(data)


# --- validators and the request plan -----------------------------------------------------------


@pytest.mark.parametrize(
    ("etag", "strong"),
    [
        ('"abc"', True),
        ('""', True),
        ('W/"abc"', False),
        ("abc", False),
        ('"abc', False),
        ('"a"b"', False),
        ('"a b"', False),
        ("", False),
        (None, False),
    ],
)
def test_is_strong_etag(etag: str | None, strong: bool) -> None:
    assert is_strong_etag(etag) is strong


@pytest.mark.parametrize(
    ("etag", "last_modified", "expected"),
    [
        (ETAG, DATE, ETAG),
        (ETAG, None, ETAG),
        ('W/"abc"', DATE, DATE),  # weak ETag -> Last-Modified fallback
        (None, DATE, DATE),
        ('W/"abc"', None, None),  # no safe validator -> cannot resume
        (None, None, None),
        (None, "not a date", None),
        ("unquoted", "", None),
    ],
)
def test_validator_for(etag: str | None, last_modified: str | None, expected: str | None) -> None:
    assert validator_for(state(etag=etag, last_modified=last_modified)) == expected


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        (None, {}),
        (state(offset=0), {}),
        (state(), {"Range": "bytes=100-", "If-Range": ETAG}),
        (state(etag='W/"x"'), {"Range": "bytes=100-", "If-Range": DATE}),
        (state(etag=None, last_modified=None), {}),
        (state(etag='W/"x"', last_modified=None), {}),
        (state(offset=1000), {"Range": "bytes=1000-", "If-Range": ETAG}),
    ],
)
def test_plan_request(partial: PartialState | None, expected: dict[str, str]) -> None:
    assert plan_request(partial) == expected


# --- Content-Range -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 100-199/1000", (100, 199, 1000)),
        ("bytes 0-0/1", (0, 0, 1)),
        ("bytes 100-199/*", (100, 199, None)),
        ("BYTES 1-2/3", (1, 2, 3)),
        (" bytes 1-2/3 ", (1, 2, 3)),
        ("bytes 199-100/1000", None),  # end < start
        ("bytes 100-1000/1000", None),  # end past the complete length
        ("bytes */1000", None),  # the 416 form is parsed separately
        ("bytes 100-/1000", None),
        ("bytes -1-5/10", None),
        ("bytes 1-2/3/4", None),
        ("items 1-2/3", None),
        ("bytes=1-2/3", None),
        ("bytes 1-2", None),
        ("bytes \u0661-\u0662/\u0663", None),  # non-ASCII digits
        ("", None),
        (None, None),
        ("garbage", None),
    ],
)
def test_parse_content_range(value: str | None, expected: tuple[int, int, int | None]) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes */1000", 1000),
        ("bytes */0", 0),
        ("bytes */*", None),
        ("bytes 1-2/3", None),
        ("*/1000", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_unsatisfied_range(value: str | None, expected: int | None) -> None:
    assert parse_unsatisfied_range(value) == expected


def test_header_value_is_case_insensitive() -> None:
    assert header_value({"content-range": "x"}, "Content-Range") == "x"
    assert header_value({"ETag": "y"}, "ETag") == "y"
    assert header_value({}, "ETag") is None


# --- verdicts ----------------------------------------------------------------------------------

CR = "Content-Range"
APPEND, RESTART = ResumeAction.APPEND, ResumeAction.RESTART
VERIFY, DISCARD, FAIL = (
    ResumeAction.VERIFY_EXISTING,
    ResumeAction.DISCARD_AND_RETRY,
    ResumeAction.FAIL,
)
FULL = {CR: "bytes 100-999/1000"}
LATER = "Thu, 22 Oct 2015 07:28:00 GMT"
NO_VALIDATOR = state(etag=None, last_modified=None)


@pytest.mark.parametrize(
    ("partial", "offset", "status", "headers", "action"),
    [
        # 206 that continues the same representation at the right byte -> append (F4)
        (state(), 100, 206, FULL, APPEND),
        (state(), 100, 206, {**FULL, "ETag": ETAG}, APPEND),
        (state(), 100, 206, {CR: "bytes 100-499/*", "Content-Length": "400"}, APPEND),
        (state(total=None), 100, 206, FULL, APPEND),
        (state(etag=None), 100, 206, {**FULL, "Last-Modified": DATE}, APPEND),
        (state(etag=None), 100, 206, {**FULL, "ETag": '"any"'}, APPEND),  # date was the validator
        (NO_VALIDATOR, 0, 206, {CR: "bytes 0-999/1000", "ETag": ETAG}, APPEND),
        # 206 that must never be spliced
        (state(), 100, 206, {CR: "bytes 0-999/1000"}, DISCARD),  # wrong start
        (state(), 100, 206, {CR: "bytes 101-999/1000"}, DISCARD),
        (state(), 100, 206, {CR: "bytes 100-1999/2000"}, DISCARD),  # total changed
        (state(), 100, 206, {**FULL, "ETag": '"other"'}, DISCARD),  # F8
        (state(), 100, 206, {**FULL, "ETag": f"W/{ETAG}"}, DISCARD),  # weak never strong-equals
        (state(etag=None), 100, 206, {**FULL, "Last-Modified": LATER}, DISCARD),
        (state(), 100, 206, {}, DISCARD),  # e.g. multipart/byteranges
        (state(), 100, 206, {CR: "garbage"}, DISCARD),
        (state(), 100, 206, {**FULL, "Content-Length": "10"}, DISCARD),
        (NO_VALIDATOR, 100, 206, FULL, DISCARD),  # no If-Range was sent: cannot trust a splice
        # 200: the origin ignored Range, or If-Range failed -> restart, never append (F7, F8)
        (state(), 100, 200, {"Content-Length": "1000"}, RESTART),
        (state(), 100, 200, {"ETag": '"new"'}, RESTART),
        (state(offset=0), 0, 200, {}, RESTART),
        # 416 (F9)
        (state(offset=1000), 1000, 416, {CR: "bytes */1000"}, VERIFY),
        (state(offset=1000, total=None), 1000, 416, {CR: "bytes */1000"}, VERIFY),
        (state(offset=1000), 1000, 416, {CR: "bytes */1000", "ETag": ETAG}, VERIFY),
        (state(offset=100), 100, 416, {CR: "bytes */1000"}, DISCARD),
        (state(offset=1000, total=None), 1000, 416, {CR: "bytes */500"}, DISCARD),
        (state(offset=1000), 1000, 416, {}, DISCARD),
        (state(offset=1000), 1000, 416, {CR: "bytes 0-1/1000"}, DISCARD),
        (state(offset=1000), 1000, 416, {CR: "bytes */1000", "ETag": '"other"'}, DISCARD),
        # anything else is not a resume answer
        (state(), 100, 404, {}, FAIL),
        (state(), 100, 503, {}, FAIL),
        (state(), 100, 304, {}, FAIL),
        (state(), 100, 204, {}, FAIL),
    ],
)
def test_on_response_action(
    partial: PartialState,
    offset: int,
    status: int,
    headers: dict[str, str],
    action: ResumeAction,
) -> None:
    decision = on_response(partial, offset, status, headers)
    assert decision.action is action, decision.reason
    assert decision.reason


def test_append_decision_carries_offset_total_and_validators() -> None:
    decision = on_response(state(), 100, 206, {"content-range": "bytes 100-999/1000"})
    assert (decision.offset, decision.total) == (100, 1000)
    assert (decision.etag, decision.last_modified) == (ETAG, DATE)
    assert decision.state_for(URL) == state()


def test_append_with_unknown_total_keeps_the_partials_total() -> None:
    decision = on_response(state(), 100, 206, {CR: "bytes 100-499/*"})
    assert (decision.action, decision.total) == (ResumeAction.APPEND, 1000)


def test_restart_takes_the_new_validators_and_length() -> None:
    new_date = "Thu, 22 Oct 2015 07:28:00 GMT"
    headers = {"Content-Length": "2000", "ETag": '"new"', "Last-Modified": new_date}
    decision = on_response(state(), 100, 200, headers)
    assert decision.action is ResumeAction.RESTART
    assert (decision.offset, decision.total) == (0, 2000)
    assert decision.state_for(URL) == PartialState(0, '"new"', new_date, 2000, URL)


@pytest.mark.parametrize("length", ["abc", "-5", "10, 10", ""])
def test_restart_with_garbage_length_has_unknown_total(length: str) -> None:
    assert on_response(state(), 100, 200, {"Content-Length": length}).total is None


def test_verify_existing_reports_the_local_size() -> None:
    decision = on_response(state(offset=1000), 1000, 416, {CR: "bytes */1000"})
    assert (decision.offset, decision.total) == (1000, 1000)


def test_discard_restarts_from_zero_without_validators() -> None:
    decision = on_response(state(), 100, 206, {CR: "bytes 0-999/1000"})
    assert (decision.offset, decision.etag, decision.last_modified) == (0, None, None)


def test_content_coded_answers_are_never_continued_or_resumable() -> None:
    coded = {"Content-Encoding": "gzip", "ETag": ETAG, "Content-Length": "500"}
    ranged = on_response(state(), 100, 206, {**coded, CR: "bytes 100-999/1000"})
    assert ranged.action is ResumeAction.DISCARD_AND_RETRY
    whole = on_response(state(), 0, 200, coded)
    assert whole.action is ResumeAction.RESTART
    assert whole.state_for(URL) == PartialState(0, None, None, None, URL)  # no validator
    identity = on_response(state(), 100, 206, {"Content-Encoding": "identity",
                                               CR: "bytes 100-999/1000"})
    assert identity.action is ResumeAction.APPEND


def test_fail_keeps_the_partial_untouched() -> None:
    decision = on_response(state(), 100, 503, {})
    assert decision.state_for(URL) == state()
    assert "503" in decision.reason


# --- stale partials and names ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "max_age", "stale"),
    [
        (0.0, 60.0, False),
        (60.0, 60.0, False),
        (60.5, 60.0, True),
        (-10.0, 60.0, False),  # mtime in the future (clock skew)
        (STALE_PARTIAL_AGE + 1, STALE_PARTIAL_AGE, True),
        (STALE_PARTIAL_AGE - 1, STALE_PARTIAL_AGE, False),
    ],
)
def test_should_discard_stale(age: float, max_age: float, stale: bool) -> None:
    now = 1_700_000_000.0
    assert should_discard_stale(now - age, now, max_age) is stale


def test_default_stale_age_is_a_week() -> None:
    now = 1_700_000_000.0
    assert STALE_PARTIAL_AGE == 7 * 24 * 3600
    assert should_discard_stale(now - 8 * 24 * 3600, now)
    assert not should_discard_stale(now - 6 * 24 * 3600, now)


def test_partial_name_is_stable_hidden_and_distinct_per_url() -> None:
    name = partial_name("model.bin", URL)
    assert name == partial_name("model.bin", URL)
    assert name.startswith(".model.bin.") and name.endswith(".part")
    assert name != partial_name("model.bin", URL + "?v=2")
    assert name != partial_name("other.bin", URL)
    assert sidecar_name(name) == name + ".json" != name


def test_partial_name_stays_under_name_max() -> None:
    assert len(partial_name("x" * 255, URL)) <= 255


@pytest.mark.parametrize("target", ["", "a/b", "..\\evil", "/abs"])
def test_partial_name_refuses_paths(target: str) -> None:
    with pytest.raises(ValueError):
        partial_name(target, URL)
