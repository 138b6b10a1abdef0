"""Retry decisions (pure): one immutable policy, and ``decide`` — retry after N seconds, or give up.

Modelled on urllib3's ``Retry``: the policy is data, ``decide`` classifies one failed attempt.
tenacity runs the loop (``vllm_fetch.retry_loop``); nothing here sleeps or touches the network.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..config import env_str
from ..errors import (
    ChecksumMismatchError,
    FetchConnectionError,
    FetchTimeoutError,
    HTTPStatusError,
    TruncatedBodyError,
)
from .body import header
from .http_dates import parse_lenient_http_date

#: Statuses that mean "try again later" (RFC 9110 §15.5.9 408, RFC 8470 425, RFC 6585 429, 5xx).
DEFAULT_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
DEFAULT_MAX_ATTEMPTS = 5
#: delay-seconds is ASCII digits only (RFC 9110 §10.2.3); str.isdigit would accept "²" or "٣".
_DELAY_SECONDS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried. Immutable: derive with :meth:`replace`.

    - ``max_attempts``: attempts in all, the first included (1 = no retries).
    - ``backoff_base`` / ``backoff_max``: exponential backoff with full jitter — attempt *n*
      waits a uniform random time in ``[0, min(backoff_max, backoff_base * 2**(n-1))]``.
    - ``retry_statuses``: HTTP statuses that are retried; every other 4xx/5xx fails at once.
    - ``retry_after_max``: the longest a server's ``Retry-After`` is honoured (longer is capped).

    Connection errors, timeouts and truncated bodies are always retried; invalid or refused
    URLs, size-cap overruns, checksum mismatches and local disk errors never are. No wait ever
    runs past the call's deadline: when it would, the call gives up at once.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    retry_after_max: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        for name in ("backoff_base", "backoff_max", "retry_after_max"):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        statuses = frozenset(self.retry_statuses)
        if any(not isinstance(s, int) or not 100 <= s <= 599 for s in statuses):
            raise ValueError(f"retry_statuses must be HTTP statuses, got {sorted(statuses)!r}")
        object.__setattr__(self, "retry_statuses", statuses)

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """The default policy, with ``VLLM_FETCH_MAX_RETRIES`` (retries after the first try)."""
        raw = env_str("VLLM_FETCH_MAX_RETRIES", environ)
        if raw is None:
            return cls()
        try:
            retries = int(raw)
        except ValueError:
            raise ValueError(f"VLLM_FETCH_MAX_RETRIES={raw!r} is not a whole number") from None
        if retries < 0:
            raise ValueError(f"VLLM_FETCH_MAX_RETRIES={raw!r} must be >= 0")
        return cls(max_attempts=retries + 1)

    def replace(self, **changes: object) -> RetryPolicy:
        """A copy with some fields changed, e.g. ``policy.replace(max_attempts=10)``."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def backoff(self, attempt: int, rand: float) -> float:
        """Full-jitter backoff after failed attempt number ``attempt`` (1-based), rand in [0,1)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** min(attempt - 1, 62))
        wait = float(rand * ceiling)
        return 0.0 if math.isnan(wait) else wait  # 0 * inf


@dataclass(frozen=True)
class RetryDecision:
    """What to do after a failed attempt."""

    retry: bool
    wait: float
    reason: str


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date (RFC 9110
    §10.2.3). Garbage gives None (ignored); a date in the past gives 0; a huge number may give
    ``inf`` (the policy caps it)."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    when = parse_lenient_http_date(value)
    return None if when is None else max(0.0, when - now)


def describe(error: BaseException) -> str:
    """A short reason for logs: the error type and its (already redacted) message."""
    return f"{type(error).__name__}: {error}"


def status_failure(
    policy: RetryPolicy, status: int, url: str, headers: Mapping[str, str]
) -> HTTPStatusError | None:
    """For calls that return any status (get_response): the error to retry on, if ``status``
    is one the policy retries; None when the response should be handed to the caller."""
    if status in policy.retry_statuses:
        return HTTPStatusError(status, url, headers=dict(headers))
    return None


def is_retryable(policy: RetryPolicy, error: BaseException) -> bool:
    """Whether this failure may succeed if tried again."""
    if isinstance(error, HTTPStatusError):
        return error.status in policy.retry_statuses
    if isinstance(error, ChecksumMismatchError):
        return False
    return isinstance(error, (FetchConnectionError, FetchTimeoutError, TruncatedBodyError))


def decide(
    policy: RetryPolicy,
    error: BaseException,
    *,
    attempt: int,
    remaining: float | None,
    rand: float,
    now: float,
) -> RetryDecision:
    """Retry after N seconds, or give up, after failed attempt number ``attempt`` (1-based).

    ``remaining`` is what is left of the call's deadline (None: no deadline); ``rand`` is a
    uniform number in [0, 1) for the jitter; ``now`` is unix time for HTTP-date Retry-After.
    """
    reason = describe(error)
    if not is_retryable(policy, error):
        return RetryDecision(False, 0.0, reason)
    if attempt >= policy.max_attempts:
        return RetryDecision(False, 0.0, f"{reason}; no attempts left")
    wait = policy.backoff(attempt, rand)
    if isinstance(error, HTTPStatusError):
        asked = parse_retry_after(header(error.headers, "Retry-After"), now)
        if asked is not None:
            wait = min(max(wait, asked), policy.retry_after_max)
    if remaining is not None and (remaining <= 0 or wait >= remaining):
        return RetryDecision(False, 0.0, f"{reason}; the deadline leaves no time to retry")
    return RetryDecision(True, wait, reason)


#: A read timeout clamped to the deadline fires at (or a hair before) the deadline's end.
DEADLINE_SLACK = 0.005


def deadline_error(
    error: FetchTimeoutError, *, timeout: float | None, remaining: float | None, url: str
) -> FetchTimeoutError | None:
    """The error that should end a call whose last attempt timed out: when the call's own
    deadline is what ran out, a timeout that says so (the last attempt's read timeout was
    clamped to the deadline, so calling it an idle stall would mislead); else None (keep it)."""
    if timeout is None or remaining is None or remaining > DEADLINE_SLACK:
        return None
    message = f"timed out after {timeout:g} s fetching {url}"
    if type(error) is FetchTimeoutError and error.args[:1] == (message,):
        return None
    replacement = FetchTimeoutError(message, url=url)
    replacement.attempts = error.attempts
    return replacement
