"""tenacity runs the retry loop; the I/O-free core (``core.retry``) makes every decision.

The first attempt runs outside tenacity, so a call that succeeds at once pays nothing for the
retry machinery (tenacity costs 10-20 µs a call, measured in benchmarks/); the first failure is
replayed into tenacity as its attempt 1, and tenacity runs every retry after it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from tenacity import AsyncRetrying, RetryCallState, Retrying, stop_never

from .core.deadline import Deadline
from .core.retry import RetryDecision, RetryPolicy, deadline_error, decide
from .core.urls import redact_url
from .errors import FetchError, FetchTimeoutError

logger = logging.getLogger("vllm_fetch")

T = TypeVar("T")


@dataclass(frozen=True)
class ResultRetry(Generic[T]):
    """Retry on a *returned* value too (get_response returns any status, yet retries a 503).

    ``failure`` says why a result should be retried (an error for ``decide``) or None to keep
    it; ``discard`` releases a result that is dropped for a retry. When the policy gives up,
    the last result is returned as it is, like any other status.
    """

    failure: Callable[[T], BaseException | None]
    discard: Callable[[T], None]


def _loop_settings(
    policy: RetryPolicy, deadline: Deadline, what: str, url: str,
    on_result: ResultRetry[Any] | None = None,
    rand: Callable[[], float] = random.random,
) -> dict[str, Any]:
    """tenacity keyword arguments wired to ``core.retry.decide``; shared by sync and async."""
    decisions: dict[int, RetryDecision] = {}

    def should_retry(state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None:
            return False
        result: Any = None
        if outcome.failed:
            error = outcome.exception()
        elif on_result is not None:
            result = outcome.result()
            error = on_result.failure(result)
        else:
            return False
        if error is None:
            return False
        decision = decide(policy, error, attempt=state.attempt_number,
                          remaining=deadline.remaining(), rand=rand(), now=time.time())
        decisions[state.attempt_number] = decision
        if decision.retry and not outcome.failed:
            assert on_result is not None
            on_result.discard(result)
        if not decision.retry and isinstance(error, FetchError):
            error.attempts = state.attempt_number
        return decision.retry

    def wait(state: RetryCallState) -> float:
        return decisions[state.attempt_number].wait

    def before_sleep(state: RetryCallState) -> None:
        decision = decisions[state.attempt_number]
        logger.warning(
            "%s %s: attempt %d/%d failed (%s); retrying in %.2f s",
            what, redact_url(url), state.attempt_number, policy.max_attempts, decision.reason,
            decision.wait,
        )

    return {"retry": should_retry, "wait": wait, "stop": stop_never,
            "before_sleep": before_sleep, "reraise": True}


class _Replay:
    """The first attempt's outcome, handed to tenacity as its attempt 1 (then real calls)."""

    def __init__(self, outcome: Any, failed: bool) -> None:
        self.outcome, self.failed, self.fresh = outcome, failed, True

    def __call__(self) -> Any:
        self.fresh = False
        if self.failed:
            raise self.outcome
        return self.outcome


class _Loop:
    """What a retried call needs; tenacity's loop is only built after a first failure.

    A plain slotted class: one is made per call, and a frozen dataclass's ``__init__`` pays an
    ``object.__setattr__`` per field.
    """

    __slots__ = ("deadline", "on_result", "policy", "url", "what")

    def __init__(self, policy: RetryPolicy, deadline: Deadline, what: str, url: str,
                 on_result: ResultRetry[Any] | None) -> None:
        self.policy, self.deadline, self.what, self.url = policy, deadline, what, url
        self.on_result = on_result

    def settings(self) -> dict[str, Any]:
        return _loop_settings(self.policy, self.deadline, self.what, self.url, self.on_result)

    def is_final(self, result: Any) -> bool:
        return self.on_result is None or self.on_result.failure(result) is None

    @contextlib.contextmanager
    def deadline_says_so(self) -> Iterator[None]:
        """When the call's deadline is what ended it, raise a timeout that says so."""
        try:
            yield
        except FetchTimeoutError as exc:
            replacement = deadline_error(exc, timeout=self.deadline.timeout,
                                         remaining=self.deadline.remaining(),
                                         url=redact_url(self.url))
            if replacement is None:
                raise
            raise replacement from exc


class SyncRetry(_Loop):
    """Call ``fn`` under the policy: once directly, then, after a failure, in tenacity's loop."""

    __slots__ = ()

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            replay = _Replay(exc, failed=True)
        else:
            if self.on_result is None or self.is_final(result):
                return result
            replay = _Replay(result, failed=False)

        def attempt(*a: Any, **kw: Any) -> T:
            return cast(T, replay()) if replay.fresh else fn(*a, **kw)

        with self.deadline_says_so():
            return Retrying(**self.settings())(attempt, *args, **kwargs)


class AsyncRetry(_Loop):
    """The async twin of :class:`SyncRetry` (tenacity's ``AsyncRetrying``, asyncio.sleep)."""

    __slots__ = ()

    async def __call__(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            replay = _Replay(exc, failed=True)
        else:
            if self.on_result is None or self.is_final(result):
                return result
            replay = _Replay(result, failed=False)
        return await self.after(replay, fn, *args, **kwargs)

    async def after(self, replay: _Replay, fn: Callable[..., Awaitable[T]], *args: Any,
                    **kwargs: Any) -> T:
        """The first attempt's outcome replayed into tenacity, which runs every retry."""

        async def attempt(*a: Any, **kw: Any) -> T:
            return cast(T, replay()) if replay.fresh else await fn(*a, **kw)

        with self.deadline_says_so():
            return await AsyncRetrying(**self.settings())(attempt, *args, **kwargs)


def sync_retrying(
    policy: RetryPolicy, deadline: Deadline, what: str, url: str,
    on_result: ResultRetry[Any] | None = None,
) -> SyncRetry:
    """Run a call under ``policy``; tenacity's ``Retrying`` with every decision from ``decide``."""
    return SyncRetry(policy, deadline, what, url, on_result)


def async_retrying(
    policy: RetryPolicy, deadline: Deadline, what: str, url: str,
    on_result: ResultRetry[Any] | None = None,
) -> AsyncRetry:
    """The async twin of :func:`sync_retrying`."""
    return AsyncRetry(policy, deadline, what, url, on_result)


async def aretry_failed(
    error: Exception, policy: RetryPolicy, deadline: Deadline, what: str, url: str,
    fn: Callable[..., Awaitable[T]], *args: Any,
) -> T:
    """What :func:`async_retrying` does once a first attempt (made by the caller, without any
    retry object: the common case succeeds) raised ``error``: retry ``fn(*args)`` under
    ``policy``, as if that attempt had run inside the loop."""
    retry = AsyncRetry(policy, deadline, what, url, None)
    return await retry.after(_Replay(error, failed=True), fn, *args)
