"""RetryPolicy and ``decide``, table-driven, with no network: every outcome, every Retry-After."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import math
from email.utils import formatdate

import pytest

from vllm_fetch import HTTPConnection
from vllm_fetch.core.deadline import Deadline
from vllm_fetch.core.retry import (
    DEFAULT_RETRY_STATUSES,
    RetryPolicy,
    deadline_error,
    decide,
    parse_retry_after,
    status_failure,
)
from vllm_fetch.errors import (
    BlockedURLError,
    ChecksumMismatchError,
    DiskError,
    FetchConnectionError,
    FetchTimeoutError,
    HTTPStatusError,
    IdleTimeoutError,
    IntegrityError,
    InvalidURLError,
    OfflineError,
    ResponseHeadersError,
    SizeLimitExceededError,
    TooManyRedirectsError,
    TruncatedBodyError,
)
from vllm_fetch.files import disk_error
from vllm_fetch.retry_loop import ResultRetry, sync_retrying

NOW = 1_800_000_000.0  # a fixed unix time, so HTTP-date Retry-After values are exact
URL = "https://cdn.example/img.png"


def status(code: int, retry_after: str | None = None) -> HTTPStatusError:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return HTTPStatusError(code, URL, headers=headers)


def enospc() -> DiskError:
    from pathlib import Path
    return disk_error(OSError(errno.ENOSPC, "No space left on device"), Path("/tmp/x"))


RETRIED = [
    pytest.param(FetchConnectionError("connection refused", url=URL), id="refused"),
    pytest.param(FetchConnectionError("cannot resolve host", url=URL), id="dns"),
    pytest.param(FetchConnectionError("connection reset", url=URL), id="reset"),
    pytest.param(FetchTimeoutError("timed out connecting", url=URL), id="timeout"),
    pytest.param(IdleTimeoutError("no data within the idle timeout", url=URL), id="idle-stall"),
    pytest.param(TruncatedBodyError("ended after 5 of 10 bytes", url=URL), id="truncated"),
    *(pytest.param(status(code), id=f"http-{code}") for code in (408, 425, 429, 500, 502, 503,
                                                                  504)),
]

NEVER_RETRIED = [
    *(pytest.param(status(code), id=f"http-{code}")
      for code in (302, 400, 401, 403, 404, 405, 409, 410, 413, 416, 422, 451, 501, 505)),
    pytest.param(InvalidURLError("Invalid HTTP URL"), id="invalid-url"),
    pytest.param(BlockedURLError("blocked by policy"), id="blocked-url"),
    pytest.param(SizeLimitExceededError("larger than max_bytes"), id="size-cap"),
    pytest.param(ChecksumMismatchError("sha256 differs"), id="checksum"),
    pytest.param(IntegrityError("cannot decode the body"), id="decode"),
    pytest.param(ResponseHeadersError("garbage Content-Length"), id="bad-headers"),
    pytest.param(TooManyRedirectsError("redirect loop"), id="redirect-loop"),
    pytest.param(OfflineError("not cached"), id="offline"),
    pytest.param(enospc(), id="enospc"),
    pytest.param(OSError(errno.ENOSPC, "No space left"), id="bare-oserror"),
    pytest.param(ValueError("not JSON"), id="value-error"),
    pytest.param(KeyboardInterrupt(), id="ctrl-c"),
    pytest.param(asyncio.CancelledError(), id="cancelled"),
]


def run(error: BaseException, *, policy: RetryPolicy | None = None, attempt: int = 1,
        remaining: float | None = None, rand: float = 0.5, now: float = NOW):
    return decide(policy or RetryPolicy(), error, attempt=attempt, remaining=remaining,
                  rand=rand, now=now)


# -- what is retried -------------------------------------------------------------------------
@pytest.mark.parametrize("error", RETRIED)
def test_transient_failures_are_retried(error: BaseException) -> None:
    decision = run(error)
    assert decision.retry
    assert type(error).__name__ in decision.reason


@pytest.mark.parametrize("error", NEVER_RETRIED)
def test_permanent_failures_are_never_retried(error: BaseException) -> None:
    decision = run(error)
    assert not decision.retry and decision.wait == 0


def test_default_statuses_are_exactly_the_issue_list() -> None:
    assert frozenset({408, 425, 429, 500, 502, 503, 504}) == DEFAULT_RETRY_STATUSES


def test_retry_statuses_are_configurable() -> None:
    policy = RetryPolicy(retry_statuses={503, 520})
    assert run(status(520), policy=policy).retry
    assert not run(status(500), policy=policy).retry


@pytest.mark.parametrize(("max_attempts", "attempt", "retry"), [
    (1, 1, False), (2, 1, True), (2, 2, False), (5, 4, True), (5, 5, False), (5, 9, False),
])
def test_attempts_are_bounded(max_attempts: int, attempt: int, retry: bool) -> None:
    decision = run(status(503), policy=RetryPolicy(max_attempts=max_attempts), attempt=attempt)
    assert decision.retry is retry
    if not retry:
        assert "no attempts left" in decision.reason


# -- backoff with full jitter -----------------------------------------------------------------
@pytest.mark.parametrize(("base", "cap", "attempt", "ceiling"), [
    (0.5, 20.0, 1, 0.5), (0.5, 20.0, 2, 1.0), (0.5, 20.0, 3, 2.0), (0.5, 20.0, 6, 16.0),
    (0.5, 20.0, 7, 20.0), (0.5, 20.0, 1000, 20.0), (0.0, 20.0, 5, 0.0), (1.0, 0.0, 3, 0.0),
    (math.inf, 3.0, 1, 3.0),
])
def test_full_jitter_bounds(base: float, cap: float, attempt: int, ceiling: float) -> None:
    policy = RetryPolicy(backoff_base=base, backoff_max=cap)
    assert policy.backoff(attempt, 0.0) == 0.0
    waits = [policy.backoff(attempt, r / 100) for r in range(100)]
    assert all(0.0 <= w <= ceiling for w in waits)
    assert waits == sorted(waits)  # uniform in [0, ceiling): scales with the random draw
    assert policy.backoff(attempt, 0.999999) == pytest.approx(ceiling, rel=1e-5, abs=1e-9)


def test_decide_uses_the_jittered_backoff() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=100.0)
    assert run(status(503), policy=policy, attempt=3, rand=0.25).wait == pytest.approx(1.0)
    assert run(status(503), policy=policy, attempt=3, rand=0.0).wait == 0.0


# -- Retry-After ----------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "seconds"), [
    ("2", 2.0), (" 120 ", 120.0), ("0", 0.0),
    (formatdate(NOW + 30, usegmt=True), 30.0),                         # IMF-fixdate
    (formatdate(NOW - 30, usegmt=True), 0.0),                          # in the past
    ("Fri, 15 Jan 2027 10:00:00 +0000", 7200.0),                        # numeric zone
    ("Fri, 15 Jan 2027 10:00:00 -0000", 7200.0),                        # "-0000": still UTC
    ("9" * 400, math.inf),                                             # absurd: capped later
    (None, None), ("", None), ("soon", None), ("1.5", None), ("-1", None), ("+3", None),
    ("0x10", None), ("²", None), ("٣", None), ("Mon, 32 Foo 2026 99:00:00 GMT", None),
    ("Mon, 01 Jan 99999 00:00:00 GMT", None),
])
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_http_date_forms_agree() -> None:
    forms = ["Fri, 15 Jan 2027 10:00:00 GMT", "Friday, 15-Jan-27 10:00:00 GMT",
             "Fri Jan 15 10:00:00 2027"]
    got = {parse_retry_after(form, NOW) for form in forms}
    assert len(got) == 1 and got.pop() == pytest.approx(1_800_007_200.0 - NOW)


@pytest.mark.parametrize(("retry_after", "rand", "wait"), [
    ("2", 0.0, 2.0),                         # the server's delay, not the (zero) backoff
    ("0", 0.5, 0.25),                        # the backoff when it is longer
    ("86400", 0.5, 60.0),                    # absurd: capped at retry_after_max
    ("9" * 400, 0.5, 60.0),                  # overflows to inf: capped
    ("Fri, 31 Dec 9999 23:59:59 GMT", 0.5, 60.0),
    (formatdate(NOW + 7, usegmt=True), 0.0, 7.0),
    ("garbage", 0.5, 0.25),                  # ignored: plain backoff
])
def test_retry_after_is_honoured_and_capped(retry_after: str, rand: float, wait: float) -> None:
    decision = run(status(503, retry_after), rand=rand)
    assert decision.retry and decision.wait == pytest.approx(wait)


def test_retry_after_cap_is_a_policy_field() -> None:
    policy = RetryPolicy(retry_after_max=0.3)
    assert run(status(429, "3600"), policy=policy).wait == pytest.approx(0.3)


def test_retry_after_never_makes_a_permanent_status_retryable() -> None:
    assert not run(status(404, "1")).retry
    assert not run(status(503, "1"), policy=RetryPolicy.none()).retry


# -- the deadline -----------------------------------------------------------------------------
@pytest.mark.parametrize(("retry_after", "remaining", "retry"), [
    ("2", 10.0, True), ("2", 2.5, True), ("2", 2.0, False), ("2", 1.0, False),
    ("86400", 120.0, True),   # capped to 60 s, which fits
    (None, 0.0, False), (None, None, True),
])
def test_waits_never_run_past_the_deadline(retry_after: str | None, remaining: float | None,
                                           retry: bool) -> None:
    decision = run(status(503, retry_after), remaining=remaining, rand=0.0)
    assert decision.retry is retry
    if not retry:
        assert "deadline" in decision.reason


@pytest.mark.parametrize("remaining", [0.001, 0.05, 0.3, 1.0, 7.0, 40.0])
def test_no_jittered_wait_reaches_the_deadline(remaining: float) -> None:
    policy = RetryPolicy(max_attempts=50, backoff_base=0.5, backoff_max=20.0)
    for attempt in range(1, 50):
        for r in range(100):
            decision = run(FetchConnectionError("reset"), policy=policy, attempt=attempt,
                           remaining=remaining, rand=r / 100)
            assert not decision.retry or 0.0 <= decision.wait < remaining


@pytest.mark.parametrize(("error", "timeout", "remaining", "replaced"), [
    (IdleTimeoutError("no data within the idle timeout", url=URL), 5.0, 0.0, True),
    (FetchTimeoutError("timed out fetching", url=URL), 5.0, 0.001, True),
    (IdleTimeoutError("no data within the idle timeout", url=URL), 5.0, 2.0, False),  # real stall
    (IdleTimeoutError("no data within the idle timeout", url=URL), None, None, False),
    (FetchTimeoutError(f"timed out after 5 s fetching {URL}", url=URL), 5.0, 0.0, False),
])
def test_a_timeout_at_the_deadline_says_so(error: FetchTimeoutError, timeout: float | None,
                                           remaining: float | None, replaced: bool) -> None:
    error.attempts = 3
    got = deadline_error(error, timeout=timeout, remaining=remaining, url=URL)
    if not replaced:
        assert got is None
        return
    assert type(got) is FetchTimeoutError and got.attempts == 3
    assert str(got) == f"timed out after 5 s fetching {URL} (after 3 attempts)"


# -- status_failure (get_response retries on a returned status) -------------------------------
def test_status_failure() -> None:
    failure = status_failure(RetryPolicy(), 503, URL, {"Retry-After": "3"})
    assert isinstance(failure, HTTPStatusError) and failure.status == 503
    assert run(failure, rand=0.0).wait == 3.0
    assert status_failure(RetryPolicy(), 200, URL, {}) is None
    assert status_failure(RetryPolicy(), 404, URL, {}) is None


# -- the policy object --------------------------------------------------------------------------
def test_defaults_suit_a_short_fetch_and_a_long_download() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 5
    worst_backoff = sum(policy.backoff(n, 0.999999) for n in range(1, policy.max_attempts))
    assert worst_backoff < 10  # a retried 5 s image fetch stays bounded by its own deadline
    assert policy.retry_after_max == 60.0


def test_none_never_retries() -> None:
    policy = RetryPolicy.none()
    assert policy.max_attempts == 1
    for error in (status(503), FetchConnectionError("refused"), TruncatedBodyError("cut")):
        assert not run(error, policy=policy).retry


def test_policy_is_immutable() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 10  # type: ignore[misc]
    changed = policy.replace(max_attempts=10, retry_statuses={503})
    assert changed.max_attempts == 10 and policy.max_attempts == 5
    assert changed.retry_statuses == frozenset({503})
    assert isinstance(changed.retry_statuses, frozenset)
    assert policy == RetryPolicy() and hash(policy) == hash(RetryPolicy())


@pytest.mark.parametrize(("kwargs", "exc"), [
    ({"max_attempts": 0}, ValueError), ({"max_attempts": -1}, ValueError),
    ({"max_attempts": 1.5}, TypeError), ({"max_attempts": True}, TypeError),
    ({"backoff_base": -1.0}, ValueError), ({"backoff_max": math.nan}, ValueError),
    ({"retry_after_max": -0.1}, ValueError), ({"retry_statuses": {99}}, ValueError),
    ({"retry_statuses": {600}}, ValueError), ({"retry_statuses": {"503"}}, ValueError),
])
def test_invalid_policies_are_refused(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "attempts"), [
    (None, 5), ("", 5), ("0", 1), ("3", 4), (" 7 ", 8), ("20", 21),
])
def test_from_env(value: str | None, attempts: int) -> None:
    environ = {} if value is None else {"VLLM_FETCH_MAX_RETRIES": value}
    assert RetryPolicy.from_env(environ).max_attempts == attempts


@pytest.mark.parametrize("value", ["-1", "abc", "2.5", "1e3"])
def test_from_env_refuses_garbage(value: str) -> None:
    with pytest.raises(ValueError, match="VLLM_FETCH_MAX_RETRIES"):
        RetryPolicy.from_env({"VLLM_FETCH_MAX_RETRIES": value})


def test_connection_reads_max_retries_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_FETCH_MAX_RETRIES", "2")
    assert HTTPConnection().retry.max_attempts == 3
    assert HTTPConnection(retry=RetryPolicy.none()).retry.max_attempts == 1
    monkeypatch.delenv("VLLM_FETCH_MAX_RETRIES")
    assert HTTPConnection().retry == RetryPolicy()


# -- the tenacity loop, driven by decide (no network: a function that fails on cue) ------------
FAST = RetryPolicy(max_attempts=3, backoff_base=0.0)


def flaky(failures: list[BaseException], result: str = "ok"):
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    return attempt, calls


def test_loop_retries_then_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    attempt, calls = flaky([status(503), FetchConnectionError("reset")])
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        assert sync_retrying(FAST, Deadline(None), "GET", URL + "?sig=s3cr3t")(attempt) == "ok"
    assert len(calls) == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "vllm_fetch"]
    assert len(lines) == 2 and "attempt 1/3" in lines[0] and "attempt 2/3" in lines[1]
    assert not any("s3cr3t" in line for line in lines)


def test_loop_gives_up_with_the_attempt_count() -> None:
    attempt, calls = flaky([status(503)] * 5)
    with pytest.raises(HTTPStatusError) as info:
        sync_retrying(FAST, Deadline(None), "GET", URL)(attempt)
    assert len(calls) == 3 and info.value.attempts == 3
    assert "after 3 attempts" in str(info.value)


def test_loop_stops_at_once_on_a_permanent_error() -> None:
    attempt, calls = flaky([status(503), ChecksumMismatchError("bad sha256")])
    with pytest.raises(ChecksumMismatchError) as info:
        sync_retrying(FAST, Deadline(None), "GET", URL)(attempt)
    assert len(calls) == 2 and info.value.attempts == 2


def test_loop_retries_on_a_returned_status_and_discards_it() -> None:
    answers = [503, 429, 200]
    discarded: list[int] = []
    on_result = ResultRetry[int](
        failure=lambda code: status_failure(FAST, code, URL, {}), discard=discarded.append)
    got = sync_retrying(FAST, Deadline(None), "GET", URL, on_result)(answers.pop, 0)
    assert got == 200 and discarded == [503, 429]


def test_loop_returns_the_last_status_when_it_gives_up() -> None:
    answers = [503, 503, 503, 503]
    discarded: list[int] = []
    on_result = ResultRetry[int](
        failure=lambda code: status_failure(FAST, code, URL, {}), discard=discarded.append)
    got = sync_retrying(FAST, Deadline(None), "GET", URL, on_result)(answers.pop)
    assert got == 503 and discarded == [503, 503] and len(answers) == 1


def test_a_first_success_never_builds_the_tenacity_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm_fetch.retry_loop as retry_loop

    def no_loop(**_: object) -> None:
        raise AssertionError("tenacity loop built for a call that succeeded at once")

    monkeypatch.setattr(retry_loop, "Retrying", no_loop)
    monkeypatch.setattr(retry_loop, "AsyncRetrying", no_loop)
    assert sync_retrying(FAST, Deadline(None), "GET", URL)(lambda: "ok") == "ok"

    async def ok() -> str:
        return "ok"

    assert asyncio.run(retry_loop.async_retrying(FAST, Deadline(None), "GET", URL)(ok)) == "ok"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), asyncio.CancelledError()])
def test_an_interrupt_on_the_first_attempt_is_never_retried(interrupt: BaseException) -> None:
    attempt, calls = flaky([interrupt])
    with pytest.raises(type(interrupt)):
        sync_retrying(FAST, Deadline(None), "GET", URL)(attempt)
    assert len(calls) == 1


def test_async_loop_replays_the_first_failure_then_retries() -> None:
    from vllm_fetch.retry_loop import async_retrying

    failures = [status(503), TruncatedBodyError("cut")]

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert asyncio.run(async_retrying(FAST, Deadline(None), "GET", URL)(attempt)) == "ok"
    assert failures == []
